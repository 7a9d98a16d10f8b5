// The code interpreter's client: HTTP to mitos-interpreter (guest/interpreter)
// on guest port 49999, over the agent's port forward. The guest server speaks
// E2B's code-interpreter protocol (one JSON object per line); this maps its
// lines to typed events and an outcome with an exit code
// (docs/code-interpreter.md).

import { randomUUID } from "node:crypto";
import http from "node:http";
import readline from "node:readline";
import type { AgentClient } from "./agent/client.js";
import { MitosError } from "./errors.js";

export const INTERPRETER_PORT = 49999;
const START_COMMAND = "/usr/lib/mitos/mitos-interpreter start";
const START_TIMEOUT_MS = 600_000; // TCG: a first kernel imports numpy, pandas and matplotlib

/**
 * Starts the guest's interpreter server and its default kernel, returning once
 * they answer (a no-op when already running). Template builds call it.
 */
export async function startInterpreter(agent: AgentClient, env: Record<string, string>, where: string): Promise<void> {
  const r = await agent.exec({ command: START_COMMAND, env, timeoutMs: START_TIMEOUT_MS }).result;
  if (r.exitCode !== 0) {
    throw new MitosError("invalid_input", `the code interpreter did not start in ${where} (exit ${r.exitCode})`, {
      remediation:
        "Its log is in cause. If an init step changed Python (e.g. removed ipykernel, numpy or pandas), undo that; the interpreter needs Debian's python3-ipykernel and python3-jupyter-client.",
      cause: `${r.stdout.toString().slice(-2000)}${r.stderr.toString().slice(-2000)}`,
      context: { where },
    });
  }
}

/** One display output of a cell: MIME type → the kernel's string (PNG/JPEG as base64; JSON as JSON text). */
export interface CodeResult {
  isMainResult: boolean;
  data: Record<string, string>;
}

export interface CodeError {
  name: string;
  value: string;
  traceback: string[];
}

export type CodeEvent =
  | { kind: "stdout"; text: string }
  | { kind: "stderr"; text: string }
  | { kind: "result"; result: CodeResult }
  | { kind: "error"; error: CodeError };

export interface RunCodeOptions {
  code: string;
  /** "python" (the default) is the one language served. */
  language?: string;
  /** A context id from createContext; default: the sandbox's default context. */
  context?: string;
  /** The cell is interrupted (not the VM killed) after this long; the context keeps its state. */
  timeoutSeconds?: number;
  env?: Record<string, string>;
  /** Lines for the cell's input(); without it input() raises at once. */
  stdin?: AsyncIterable<Uint8Array>;
  signal?: AbortSignal;
  /** Awaited before the next event is read: a slow consumer slows the cell's output, never drops it. */
  onEvent: (e: CodeEvent) => void | Promise<void>;
}

/** 0 ok, 1 the code raised, 124 interrupted at its timeout, 127 no kernel in this sandbox. */
export interface RunCodeOutcome {
  exitCode: 0 | 1 | 124 | 127;
  error?: CodeError;
  executionCount?: number;
  /** The kernel had died or was restarted by this call: the context's variables are gone. */
  kernelRestarted: boolean;
}

export interface CodeContext {
  id: string;
  language: string;
  cwd: string;
}

// E2B's result keys → MIME types (the inverse of the guest server's table).
const KEY_MIME: Record<string, string> = {
  text: "text/plain",
  html: "text/html",
  markdown: "text/markdown",
  svg: "image/svg+xml",
  png: "image/png",
  jpeg: "image/jpeg",
  pdf: "application/pdf",
  latex: "text/latex",
  json: "application/json",
  javascript: "application/javascript",
};

const NO_KERNEL = "KernelUnavailable";

export class Interpreter {
  /**
   * @param restartServer starts the guest server again, for a sandbox whose
   *   template runs one (undefined: this sandbox has no interpreter).
   */
  constructor(
    private readonly agent: AgentClient,
    private readonly sandbox: string,
    private readonly sandboxEnv: Record<string, string> = {},
    private readonly restartServer?: () => Promise<void>,
  ) {}

  async run(opts: RunCodeOptions): Promise<RunCodeOutcome> {
    const env = { ...this.sandboxEnv, ...(opts.env ?? {}) };
    const executionId = opts.stdin ? randomId() : undefined;
    const body = {
      code: opts.code,
      ...(opts.context ? { context_id: opts.context } : {}),
      ...(opts.language ? { language: opts.language } : {}),
      ...(Object.keys(env).length > 0 ? { env_vars: env } : {}),
      ...(opts.timeoutSeconds ? { timeout: opts.timeoutSeconds } : {}),
      ...(executionId ? { execution_id: executionId, allow_stdin: true } : {}),
    };
    const out: RunCodeOutcome = { exitCode: 0, kernelRestarted: false };
    let res: http.IncomingMessage;
    try {
      res = await this.request("POST", "/execute", body, opts.signal);
    } catch (err) {
      if (!isNoServer(err)) throw err;
      if (!this.restartServer) {
        const error = noKernelError(this.sandbox);
        await opts.onEvent({ kind: "error", error });
        return { exitCode: 127, error, kernelRestarted: false };
      }
      // Its template runs one, so it died (killed, or out of memory): start it again.
      await this.restartServer();
      out.kernelRestarted = true;
      await opts.onEvent({
        kind: "stderr",
        text: "[mitos] the code interpreter was not running; it was started again and earlier variables are gone\n",
      });
      res = await this.request("POST", "/execute", body, opts.signal);
    }
    if (res.statusCode !== 200) throw await httpError(res, this.sandbox);
    if (opts.stdin && executionId) void this.pumpStdin(executionId, opts.stdin, opts.signal);
    let ended = false;
    const lines = readline.createInterface({ input: res, crlfDelay: Number.POSITIVE_INFINITY });
    for await (const line of lines) {
      if (line.trim() === "") continue;
      const m = parseLine(line);
      if (m.kernel_restarted === true) out.kernelRestarted = true;
      switch (m.type) {
        case "stdout":
        case "stderr":
          await opts.onEvent({ kind: m.type, text: str(m.text) });
          break;
        case "result":
          await opts.onEvent({ kind: "result", result: toResult(m) });
          break;
        case "error": {
          const error = { name: str(m.name), value: str(m.value), traceback: splitTraceback(m.traceback) };
          out.error = error;
          out.exitCode = m.timed_out === true ? 124 : 1;
          await opts.onEvent({ kind: "error", error });
          break;
        }
        case "number_of_executions":
          if (typeof m.execution_count === "number") out.executionCount = m.execution_count;
          break;
        case "end_of_execution":
          ended = true;
          break;
        case "unexpected_end_of_execution":
          ended = true;
          if (out.exitCode === 0) out.exitCode = 1;
          break;
      }
    }
    if (!ended) {
      if (opts.signal?.aborted) throw canceled(this.sandbox);
      throw new MitosError("unavailable", `the code interpreter of sandbox ${this.sandbox} stopped mid-cell`, {
        remediation: "The sandbox may have been terminated or run out of memory; check it with GET /v1/sandboxes/{id}.",
        context: { sandbox: this.sandbox },
      });
    }
    return out;
  }

  async listContexts(): Promise<CodeContext[]> {
    return (await this.json("GET", "/contexts")) as CodeContext[];
  }

  async createContext(opts: { language?: string; cwd?: string } = {}): Promise<CodeContext> {
    return (await this.json("POST", "/contexts", opts)) as CodeContext;
  }

  async restartContext(id: string): Promise<void> {
    await this.json("POST", `/contexts/${encodeURIComponent(id)}/restart`, {});
  }

  async removeContext(id: string): Promise<void> {
    await this.json("DELETE", `/contexts/${encodeURIComponent(id)}`);
  }

  private async json(method: string, path: string, body?: unknown): Promise<unknown> {
    let res: http.IncomingMessage;
    try {
      res = await this.request(method, path, body);
    } catch (err) {
      if (!isNoServer(err)) throw err;
      const e = noKernelError(this.sandbox);
      throw new MitosError("invalid_input", e.value, {
        remediation: "Use a sandbox of the python template (or a template built from it), which runs the interpreter.",
        context: { sandbox: this.sandbox },
      });
    }
    if (res.statusCode === undefined || res.statusCode >= 300) throw await httpError(res, this.sandbox);
    const text = await readAll(res);
    return text === "" ? undefined : JSON.parse(text);
  }

  private async pumpStdin(executionId: string, stdin: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<void> {
    const path = `/executions/${executionId}/stdin`;
    try {
      for await (const chunk of stdin) {
        if (signal?.aborted) return;
        await this.json("POST", path, Buffer.from(chunk));
      }
      await this.json("POST", `${path}?eof=1`, Buffer.alloc(0));
    } catch {
      // The cell ended (its stdin is gone) or the sandbox did: the run reports it.
    }
  }

  private async request(
    method: string,
    path: string,
    body?: unknown,
    signal?: AbortSignal,
  ): Promise<http.IncomingMessage> {
    const stream = await this.agent.openPort(INTERPRETER_PORT, { timeoutMs: 5000 });
    const payload = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = http.request({
        method,
        path,
        host: "127.0.0.1",
        createConnection: () => stream as never,
        headers: {
          ...(payload ? { "content-type": "application/json", "content-length": payload.length } : {}),
        },
        ...(signal ? { signal } : {}),
      });
      req.on("response", resolve);
      req.on("error", (err) => {
        stream.destroy();
        reject(signal?.aborted ? canceled(this.sandbox) : err);
      });
      req.end(payload);
    });
  }
}

function parseLine(line: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(line);
    if (v && typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  return { type: "stderr", text: `[mitos] unreadable line from the interpreter: ${line.slice(0, 200)}\n` };
}

function toResult(m: Record<string, unknown>): CodeResult {
  const data: Record<string, string> = {};
  for (const [key, mime] of Object.entries(KEY_MIME)) {
    const v = m[key];
    if (v !== undefined && v !== null) data[mime] = typeof v === "string" ? v : JSON.stringify(v);
  }
  const extra = m.extra;
  if (extra && typeof extra === "object") {
    for (const [mime, v] of Object.entries(extra)) data[mime] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return { isMainResult: m.is_main_result === true, data };
}

function splitTraceback(t: unknown): string[] {
  if (Array.isArray(t)) return t.map(String);
  if (typeof t !== "string" || t === "") return [];
  return t.split("\n");
}

const str = (v: unknown): string => (typeof v === "string" ? v : v === undefined || v === null ? "" : String(v));

function noKernelError(sandbox: string): CodeError {
  return {
    name: NO_KERNEL,
    value: `sandbox ${sandbox} runs no code interpreter (nothing listens on guest port ${INTERPRETER_PORT}); its template was not built from the python image`,
    traceback: [],
  };
}

function isNoServer(err: unknown): boolean {
  return err instanceof MitosError && err.code === "unavailable" && (err.context as { errno?: number }).errno === 111;
}

function canceled(sandbox: string): MitosError {
  return new MitosError("canceled", "the caller went away; the cell was interrupted", {
    remediation: "Nothing to do: the context keeps its state.",
    context: { sandbox },
  });
}

async function httpError(res: http.IncomingMessage, sandbox: string): Promise<MitosError> {
  const text = await readAll(res);
  let message = text;
  try {
    const v = JSON.parse(text) as { error?: unknown };
    if (typeof v.error === "string") message = v.error;
  } catch {
    // not JSON: keep the text
  }
  const code = res.statusCode === 404 ? "not_found" : res.statusCode === 400 ? "invalid_input" : "internal";
  return new MitosError(code, `code interpreter: ${message}`, {
    remediation:
      code === "not_found"
        ? "List the sandbox's contexts (GET /v1/sandboxes/{id}/contexts) and use one of their ids."
        : code === "invalid_input"
          ? "Fix the request as the message says."
          : "The interpreter's log is /var/log/mitos-interpreter.log in the sandbox.",
    context: { sandbox, status: res.statusCode },
  });
}

async function readAll(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

function randomId(): string {
  return randomUUID().replaceAll("-", "");
}
