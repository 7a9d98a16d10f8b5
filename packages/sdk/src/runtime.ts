// The runtime client: Connect RPC (JSON codec, HTTP/1.1 keep-alive) against
// sandbox.v1.Sandbox, one transport per SandboxServer shared by every
// sandbox; the target sandbox goes in the X-Sandbox-Id header.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { type FileInfo as FileInfoMsg, Sandbox as SandboxService, type WriteFileRequestSchema } from "@mitos/proto";
import type { ResolvedConfig } from "./config.js";
import { errorFromConnect, makeError, streamLost } from "./errors.js";
import { USER_AGENT } from "./http.js";
import type { ExecOptions, ExecResult, Execution, FileInfo, ProcessInfo, Result, RunCodeOptions } from "./types.js";

export const SANDBOX_ID_HEADER = "x-sandbox-id";

/** Bytes per WriteFile message; JSON base64 adds a third on the wire. */
const WRITE_CHUNK = 256 * 1024;

export class RuntimeClient {
  private readonly client: Client<typeof SandboxService>;

  constructor(private readonly config: ResolvedConfig) {
    const auth: Interceptor = (next) => (req) => {
      if (config.apiKey) req.header.set("authorization", `Bearer ${config.apiKey}`);
      req.header.set("user-agent", USER_AGENT);
      return next(req);
    };
    const transport = createConnectTransport({
      baseUrl: config.baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: false,
      interceptors: [auth],
    });
    this.client = createClient(SandboxService, transport);
  }

  private opts(sandboxId: string, signal?: AbortSignal): CallOptions {
    return { headers: { [SANDBOX_ID_HEADER]: sandboxId }, signal };
  }

  private fail(err: unknown): never {
    // Anything not from Connect was thrown by the caller's own callback: pass it on untouched.
    if (!(err instanceof ConnectError)) throw err;
    throw errorFromConnect(err, this.config.baseUrl);
  }

  async exec(sandboxId: string, command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const out = new StreamText(opts.onStdout);
    const err = new StreamText(opts.onStderr);
    const request = {
      command,
      args: opts.args ? [command, ...opts.args] : [],
      env: Object.entries(opts.env ?? {}).map(([key, value]) => ({ key, value })),
      cwd: opts.cwd ?? "",
      timeoutSeconds: opts.timeoutSeconds ?? 0,
    };
    let started = false;
    try {
      for await (const msg of this.client.execStream(request, this.opts(sandboxId, opts.signal))) {
        started = true;
        const ev = msg.event;
        if (ev.case === "stdout") out.push(ev.value);
        else if (ev.case === "stderr") err.push(ev.value);
        else if (ev.case === "exit") {
          const result: ExecResult = {
            exitCode: ev.value.exitCode,
            stdout: out.end(),
            stderr: err.end(),
            execTimeMs: ev.value.execTimeMs,
          };
          if (ev.value.error) result.error = ev.value.error;
          return result;
        }
      }
    } catch (e) {
      // Output had come: the call reached the sandbox, so the command may run on without us.
      if (started && e instanceof ConnectError && !opts.signal?.aborted) {
        const lost = streamLost(e, this.config.baseUrl, "exec", sandboxId);
        if (lost) throw lost;
      }
      this.fail(e);
    }
    throw makeError({
      code: "internal",
      message: "exec stream ended without an exit status",
      context: { sandboxId, stdout: out.end(), stderr: err.end() },
    });
  }

  async runCode(sandboxId: string, code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    const out: Execution = { results: [], logs: { stdout: [], stderr: [] }, exitCode: -1 };
    const request = {
      code,
      language: opts.language ?? "",
      timeoutSeconds: BigInt(opts.timeoutSeconds ?? 0),
      contextId: typeof opts.context === "string" ? opts.context : (opts.context?.id ?? ""),
      env: Object.entries(opts.envs ?? {}).map(([key, value]) => ({ key, value })),
    };
    const decoder = new TextDecoder();
    try {
      for await (const msg of this.client.runCodeStream(request, this.opts(sandboxId, opts.signal))) {
        const m = msg.msg;
        if (m.case === "stdout" || m.case === "stderr") {
          const text = decoder.decode(m.value);
          out.logs[m.case].push(text);
          (m.case === "stdout" ? opts.onStdout : opts.onStderr)?.(text);
        } else if (m.case === "result") {
          const result = toResult(m.value.data, m.value.text);
          out.results.push(result);
          if (result.isMainResult && result.text !== undefined) out.text = result.text;
          opts.onResult?.(result);
        } else if (m.case === "error") {
          out.error = { name: m.value.name, value: m.value.value, traceback: m.value.traceback.join("\n") };
          opts.onError?.(out.error);
        } else if (m.case === "exitCode") {
          out.exitCode = m.value;
          return out;
        }
      }
    } catch (e) {
      this.fail(e);
    }
    throw makeError({
      code: "internal",
      message: "run_code stream ended without an exit code",
      context: { sandboxId, stdout: out.logs.stdout.join(""), stderr: out.logs.stderr.join("") },
    });
  }

  async readFile(sandboxId: string, path: string, signal?: AbortSignal): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    try {
      for await (const msg of this.client.readFile({ path }, this.opts(sandboxId, signal))) {
        if (msg.data.length > 0) chunks.push(msg.data);
        if (msg.eof) break;
      }
    } catch (e) {
      this.fail(e);
    }
    return Buffer.concat(chunks);
  }

  async writeFile(sandboxId: string, path: string, data: Uint8Array, mode = 0, signal?: AbortSignal): Promise<number> {
    async function* messages(): AsyncGenerator<MessageInitShape<typeof WriteFileRequestSchema>> {
      yield { msg: { case: "open", value: { path, mode } } };
      for (let i = 0; i < data.length; i += WRITE_CHUNK) {
        yield { msg: { case: "data", value: data.subarray(i, i + WRITE_CHUNK) } };
      }
    }
    try {
      const res = await this.client.writeFile(messages(), this.opts(sandboxId, signal));
      return Number(res.bytesWritten);
    } catch (e) {
      this.fail(e);
    }
  }

  async list(sandboxId: string, parent: string): Promise<FileInfo[]> {
    try {
      const res = await this.client.list({ parent }, this.opts(sandboxId));
      return res.entries.map(toFileInfo);
    } catch (e) {
      this.fail(e);
    }
  }

  async stat(sandboxId: string, path: string): Promise<FileInfo> {
    try {
      return toFileInfo(await this.client.stat({ path }, this.opts(sandboxId)));
    } catch (e) {
      this.fail(e);
    }
  }

  async mkdir(sandboxId: string, path: string): Promise<void> {
    try {
      await this.client.mkdir({ path }, this.opts(sandboxId));
    } catch (e) {
      this.fail(e);
    }
  }

  async remove(sandboxId: string, path: string, opts: { recursive?: boolean; strict?: boolean }): Promise<void> {
    try {
      await this.client.remove(
        { path, ...(opts.recursive !== undefined ? { recursive: opts.recursive } : {}), strict: opts.strict ?? false },
        this.opts(sandboxId),
      );
    } catch (e) {
      this.fail(e);
    }
  }

  async processes(sandboxId: string): Promise<ProcessInfo[]> {
    try {
      const r = await this.client.processes({}, this.opts(sandboxId));
      return r.processes.map((p) => ({
        pid: p.pid,
        ppid: p.ppid,
        command: p.command,
        state: p.state,
        rssBytes: Number(p.rssBytes),
      }));
    } catch (e) {
      this.fail(e);
    }
  }

  async signal(sandboxId: string, pid: number, signal: number): Promise<void> {
    try {
      await this.client.signal({ pid, signal }, this.opts(sandboxId));
    } catch (e) {
      this.fail(e);
    }
  }
}

const RESULT_KEYS = {
  "text/plain": "text",
  "text/html": "html",
  "text/markdown": "markdown",
  "image/svg+xml": "svg",
  "image/png": "png",
  "image/jpeg": "jpeg",
  "text/latex": "latex",
  "application/json": "json",
} as const satisfies Record<string, keyof Result>;

/** A result frame: upstream marks the main result by a non-empty text. */
function toResult(raw: Record<string, Uint8Array>, text: string): Result {
  const data: Record<string, string> = {};
  const r: Result = { isMainResult: text !== "", data };
  const decoder = new TextDecoder();
  for (const [mime, bytes] of Object.entries(raw)) {
    const v = decoder.decode(bytes);
    data[mime] = v;
    const key = RESULT_KEYS[mime as keyof typeof RESULT_KEYS];
    if (key) r[key] = v;
  }
  return r;
}

function toFileInfo(m: FileInfoMsg): FileInfo {
  return {
    name: m.name,
    path: m.path,
    isDir: m.isDir,
    size: Number(m.size),
    mode: m.mode,
    modifiedAtUnix: Number(m.modifiedAtUnix),
  };
}

/** Collects one output stream as text; a UTF-8 character split across chunks is held until complete. */
class StreamText {
  private readonly decoder = new TextDecoder("utf-8");
  private text = "";

  constructor(private readonly onChunk?: (chunk: string) => void) {}

  push(bytes: Uint8Array): void {
    const s = this.decoder.decode(bytes, { stream: true });
    if (s === "") return;
    this.text += s;
    this.onChunk?.(s);
  }

  end(): string {
    const rest = this.decoder.decode();
    if (rest !== "") {
      this.text += rest;
      this.onChunk?.(rest);
    }
    return this.text;
  }
}
