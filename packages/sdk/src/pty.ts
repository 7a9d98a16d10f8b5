// Interactive terminal sessions over mitosd's WebSocket exec route
// (API.md "Runtime": GET /sandbox.v1.Sandbox/Exec, subprotocol connect.sandbox.v1).

import WebSocket from "ws";
import type { ResolvedConfig } from "./config.js";
import { isErrorCode, makeError } from "./errors.js";

export interface PtyOptions {
  /** Command to run in the terminal (default: sh). */
  command?: string;
  cols?: number;
  rows?: number;
  env?: Record<string, string>;
  cwd?: string;
  /** Terminal output, as it arrives. */
  onData?: (data: string) => void;
}

const END_STREAM = 0x02;

export class Pty {
  readonly #ws: WebSocket;
  readonly #exit: Promise<{ exitCode: number }>;

  private constructor(ws: WebSocket, exit: Promise<{ exitCode: number }>) {
    this.#ws = ws;
    this.#exit = exit;
  }

  static async open(config: ResolvedConfig, sandboxId: string, opts: PtyOptions = {}): Promise<Pty> {
    const url = `${config.baseUrl.replace(/^http/, "ws")}/sandbox.v1.Sandbox/Exec?sandbox=${encodeURIComponent(sandboxId)}`;
    const ws = new WebSocket(url, "connect.sandbox.v1", {
      headers: config.apiKey ? { authorization: `Bearer ${config.apiKey}` } : {},
    });
    const decoder = new TextDecoder();
    let exitCode: number | undefined;
    const exit = new Promise<{ exitCode: number }>((resolve, reject) => {
      ws.on("message", (data: Buffer) => {
        const flag = data[0];
        const msg = JSON.parse(data.subarray(5).toString("utf8")) as {
          stdout?: string;
          stderr?: string;
          exit?: { exitCode?: number };
          error?: { code: string; message: string; remediation?: string };
        };
        if (flag === END_STREAM) {
          const e = msg.error;
          if (e)
            reject(
              makeError({
                code: isErrorCode(e.code) ? e.code : "internal",
                message: e.message,
                ...(e.remediation ? { remediation: e.remediation } : {}),
              }),
            );
          else resolve({ exitCode: exitCode ?? -1 });
          return;
        }
        const chunk = msg.stdout ?? msg.stderr;
        if (chunk !== undefined) opts.onData?.(decoder.decode(Buffer.from(chunk, "base64"), { stream: true }));
        if (msg.exit) exitCode = msg.exit.exitCode ?? 0;
      });
      ws.on("close", () => reject(makeError({ code: "canceled", message: "the terminal session closed" })));
      ws.on("unexpected-response", (_req, res) =>
        reject(
          makeError({
            code: res.statusCode === 401 ? "unauthorized" : res.statusCode === 404 ? "not_found" : "unavailable",
            message: `mitosd refused the terminal WebSocket (HTTP ${res.statusCode})`,
          }),
        ),
      );
      ws.on("error", (e) =>
        reject(makeError({ code: "unavailable", message: `terminal WebSocket error: ${e.message}` })),
      );
    });
    exit.catch(() => {});
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      exit.catch(reject);
    });
    const pty = new Pty(ws, exit);
    pty.#send({
      open: {
        command: opts.command ?? "sh",
        env: Object.entries(opts.env ?? {}).map(([key, value]) => ({ key, value })),
        cwd: opts.cwd ?? "",
        pty: { term: "xterm-256color", size: { cols: opts.cols ?? 80, rows: opts.rows ?? 24 } },
      },
    });
    return pty;
  }

  write(data: string | Uint8Array): void {
    this.#send({ stdin: Buffer.from(data).toString("base64") });
  }

  resize(cols: number, rows: number): void {
    this.#send({ resize: { cols, rows } });
  }

  /** Ends the session; the server kills the terminal's processes. */
  kill(): void {
    this.#ws.close();
  }

  /** Resolves with the exit code when the terminal's command exits. */
  wait(): Promise<{ exitCode: number }> {
    return this.#exit;
  }

  #send(msg: unknown): void {
    const body = Buffer.from(JSON.stringify(msg));
    const head = Buffer.alloc(5);
    head.writeUInt32BE(body.length, 1);
    this.#ws.send(Buffer.concat([head, body]));
  }
}
