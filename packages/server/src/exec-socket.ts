// Interactive exec for HTTP/1.1 clients (API.md "Runtime"): GET
// /sandbox.v1.Sandbox/Exec?sandbox=<id> upgraded to a WebSocket with
// subprotocol connect.sandbox.v1. Each binary message is one Connect envelope
// (flag byte, 4-byte big-endian length, JSON): ExecRequest from the client,
// ExecResponse from the server, then an end-of-stream envelope (flag 0x02)
// with {} or {"error":{code,message}}. Closing the socket kills the command.

import { fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import websocket from "@fastify/websocket";
import type { Engine } from "@mitos/engine";
import { MitosError } from "@mitos/engine";
import { type ExecRequest, ExecRequestSchema, ExecResponseSchema } from "@mitos/proto";
import type { FastifyInstance } from "fastify";
import type { WebSocket } from "ws";
import { toMitosError } from "./errors.js";
import { interactiveExec } from "./interactive-exec.js";
import { StreamQueue } from "./stream-queue.js";

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
  app.route<{ Querystring: { sandbox?: string } }>({
    method: "GET",
    url: "/sandbox.v1.Sandbox/Exec",
    // A plain GET (no upgrade) gets the API envelope, not an empty 404.
    handler: async () => {
      throw new MitosError("invalid_input", "this route needs a WebSocket upgrade", {
        remediation: `Connect with a WebSocket, subprotocol ${EXEC_SUBPROTOCOL}; or call Exec over h2c, or ExecStream.`,
      });
    },
    wsHandler: (socket, req) => {
      const sandboxId = req.query.sandbox ?? (req.headers["x-sandbox-id"] as string | undefined) ?? "";
      serve(socket, sandboxId, opts.engine, opts.maxExecTimeoutSeconds);
    },
  });
}

function serve(socket: WebSocket, sandboxId: string, engine: Engine, maxExecTimeoutSeconds: number): void {
  const send = (flag: number, json: JsonValue) =>
    new Promise<void>((resolve) => {
      if (socket.readyState !== socket.OPEN) return resolve();
      // Resolving on the write callback gives backpressure to the guest stream.
      socket.send(encodeEnvelope(flag, Buffer.from(JSON.stringify(json))), () => resolve());
    });
  const inputs = new StreamQueue<ExecRequest>(64);
  const closed = new AbortController();
  socket.on("message", (data: Buffer, isBinary: boolean) => {
    try {
      void inputs.push(decode(data, isBinary));
    } catch (err) {
      inputs.end(err as Error);
    }
  });
  socket.on("close", () => {
    inputs.end();
    closed.abort();
  });
  void (async () => {
    try {
      for await (const m of interactiveExec(engine, sandboxId, inputs, maxExecTimeoutSeconds, closed.signal)) {
        await send(0, toJson(ExecResponseSchema, m, { alwaysEmitImplicit: true }));
      }
      await send(END_STREAM, {});
    } catch (err) {
      const m = toMitosError(err);
      await send(END_STREAM, { error: { code: m.code, message: m.message, remediation: m.remediation } });
    }
    socket.close(1000);
  })();
}

function decode(data: Buffer, isBinary: boolean): ExecRequest {
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
    return fromJson(ExecRequestSchema, JSON.parse(data.subarray(5).toString("utf8")) as JsonValue);
  } catch (e) {
    throw new MitosError("invalid_json", `bad ExecRequest message: ${(e as Error).message}`, {
      remediation:
        'Send JSON like {"open":{"command":"sh","pty":{"size":{"cols":80,"rows":24}}}} or {"stdin":"<base64>"}.',
    });
  }
}
