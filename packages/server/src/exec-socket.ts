// Interactive exec for HTTP/1.1 clients (API.md "Runtime"): GET
// /sandbox.v1.Sandbox/Exec?sandbox=<id> upgraded to a WebSocket with
// subprotocol connect.sandbox.v1. Each binary message is one Connect envelope
// (flag byte, 4-byte big-endian length, JSON): ExecInput from the client,
// ExecResponse from the server, then an end-of-stream envelope (flag 0x02)
// with {} or {"error":{code,message}}. Closing the socket kills the command.

import { fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import websocket from "@fastify/websocket";
import type { Engine, ExecHandle } from "@mitos/engine";
import { MitosError } from "@mitos/engine";
import { type ExecInput, ExecInputSchema, type ExecResponse, ExecResponseSchema } from "@mitos/proto";
import type { FastifyInstance } from "fastify";
import type { WebSocket } from "ws";
import { toMitosError } from "./errors.js";
import { toExecRequest } from "./runtime.js";

export const EXEC_SUBPROTOCOL = "connect.sandbox.v1";
const END_STREAM = 0x02;

export async function registerExecSocket(
  app: FastifyInstance,
  opts: { engine: Engine; maxExecTimeoutSeconds: number; maxMessageBytes?: number },
): Promise<void> {
  await app.register(websocket, {
    options: {
      maxPayload: opts.maxMessageBytes ?? 1 << 20,
      handleProtocols: (protocols) => (protocols.has(EXEC_SUBPROTOCOL) ? EXEC_SUBPROTOCOL : false),
    },
  });
  app.get<{ Querystring: { sandbox?: string } }>("/sandbox.v1.Sandbox/Exec", { websocket: true }, (socket, req) => {
    const sandboxId = req.query.sandbox ?? (req.headers["x-sandbox-id"] as string | undefined) ?? "";
    serve(socket, sandboxId, opts.engine, opts.maxExecTimeoutSeconds);
  });
}

function serve(socket: WebSocket, sandboxId: string, engine: Engine, maxExecTimeoutSeconds: number): void {
  let handle: ExecHandle | undefined;
  let finished = false;
  const send = (flag: number, json: JsonValue) =>
    new Promise<void>((resolve) => {
      if (socket.readyState !== socket.OPEN) return resolve();
      const body = Buffer.from(JSON.stringify(json));
      const head = Buffer.alloc(5);
      head[0] = flag;
      head.writeUInt32BE(body.length, 1);
      // Resolving on the write callback gives backpressure to the guest stream.
      socket.send(Buffer.concat([head, body]), () => resolve());
    });
  const event = (e: ExecResponse["event"]) =>
    send(
      0,
      toJson(ExecResponseSchema, { $typeName: "sandbox.v1.ExecResponse", event: e }, { alwaysEmitImplicit: true }),
    );
  const fail = (err: unknown) => {
    if (finished) return;
    finished = true;
    const m = toMitosError(err);
    void send(END_STREAM, {
      error: { code: m.code, message: m.message, remediation: m.remediation },
    } as JsonValue).then(() => socket.close(1000));
  };

  socket.on("message", (data: Buffer, isBinary: boolean) => {
    try {
      const input = decode(data, isBinary);
      const m = input.input;
      if (!handle) {
        if (m.case !== "open")
          throw new MitosError("invalid_input", "the first message must be {open:{…}}", {
            remediation: "Send {open:{command, pty?}} first, then stdin/resize/stdinClose messages.",
          });
        const o = m.value;
        const pty = o.pty ? { cols: o.pty.size?.cols || 80, rows: o.pty.size?.rows || 24 } : undefined;
        handle = engine.exec(sandboxId, {
          ...toExecRequest(o, maxExecTimeoutSeconds),
          ...(pty ? { pty } : {}),
          stdin: true,
          collect: false,
          onStdout: (c) => event({ case: "stdout", value: c }),
          onStderr: (c) => event({ case: "stderr", value: c }),
        });
        handle.result.then(
          async (r) => {
            await event({
              case: "exit",
              value: { $typeName: "sandbox.v1.ExitStatus", exitCode: r.exitCode, execTimeMs: r.durationMs, error: "" },
            });
            finished = true;
            await send(END_STREAM, {});
            socket.close(1000);
          },
          (err: unknown) => fail(err),
        );
        return;
      }
      if (m.case === "stdin") void handle.write(Buffer.from(m.value)).catch(() => {});
      else if (m.case === "resize") handle.resize(m.value.cols, m.value.rows);
      else if (m.case === "stdinClose") handle.closeStdin();
      else if (m.case === "open")
        throw new MitosError("invalid_input", "open was sent twice", { remediation: "Send open once." });
    } catch (err) {
      handle?.signal(9);
      fail(err);
    }
  });
  socket.on("close", () => {
    // The client went away: the guest process group goes too.
    if (!finished) handle?.signal(9);
  });
}

function decode(data: Buffer, isBinary: boolean): ExecInput {
  if (!isBinary || data.length < 5) {
    throw new MitosError("invalid_input", "each message must be one binary Connect envelope", {
      remediation: "Send binary messages: 1 flag byte, 4-byte big-endian length, then the JSON message.",
    });
  }
  const len = data.readUInt32BE(1);
  if (len !== data.length - 5) {
    throw new MitosError(
      "invalid_input",
      `envelope length ${len} does not match the message (${data.length - 5} bytes)`,
      {
        remediation: "Send exactly one envelope per WebSocket message.",
      },
    );
  }
  try {
    return fromJson(ExecInputSchema, JSON.parse(data.subarray(5).toString("utf8")) as JsonValue);
  } catch (e) {
    throw new MitosError("invalid_json", `bad ExecInput message: ${(e as Error).message}`, {
      remediation:
        'Send JSON like {"open":{"command":"sh","pty":{"size":{"cols":80,"rows":24}}}} or {"stdin":"<base64>"}.',
    });
  }
}
