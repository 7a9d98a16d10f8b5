// A sandbox handle: lifecycle calls go to the REST API, exec and files to the
// runtime service. Fields mirror the server's sandbox object and are refreshed
// by info() and by calls that change them.

import type { ResolvedConfig } from "./config.js";
import { makeError } from "./errors.js";
import type { LifecycleClient } from "./http.js";
import { Pty, type PtyOptions } from "./pty.js";
import type { RuntimeClient } from "./runtime.js";
import type {
  Accel,
  CheckpointInfo,
  CodeContext,
  ExecOptions,
  ExecResult,
  Execution,
  ExposedPort,
  FileInfo,
  MemoryUsage,
  NetworkPolicy,
  ProcessInfo,
  RunCodeOptions,
  SandboxInfo,
  SandboxState,
  TimeoutInfo,
} from "./types.js";
import {
  type Json,
  networkBody,
  toCheckpointInfo,
  toCodeContext,
  toExposedPort,
  toForkMany,
  toSandboxInfo,
  toTimeoutInfo,
} from "./wire.js";

/** What a Sandbox needs from its SandboxServer. */
export interface Clients {
  http: LifecycleClient;
  runtime: RuntimeClient;
  config: ResolvedConfig;
}

export interface ForkOptions {
  /**
   * Sent as `pause_source`, the public API's flag: the source is paused for a
   * consistent capture and resumed afterwards, with or without it.
   */
  pauseSource?: boolean;
}

export class Sandbox {
  #info: SandboxInfo;
  readonly #clients: Clients;
  readonly files: SandboxFiles;

  constructor(clients: Clients, info: SandboxInfo) {
    this.#clients = clients;
    this.#info = info;
    this.files = new SandboxFiles(clients.runtime, info.id);
  }

  get id(): string {
    return this.#info.id;
  }
  get templateId(): string {
    return this.#info.templateId;
  }
  get parentId(): string | null {
    return this.#info.parentId;
  }
  get state(): SandboxState {
    return this.#info.state;
  }
  get endpoint(): string | undefined {
    return this.#info.endpoint;
  }
  get createdAt(): string {
    return this.#info.createdAt;
  }
  get deadlineUnix(): number | undefined {
    return this.#info.deadlineUnix;
  }
  get forkTimeMs(): number {
    return this.#info.forkTimeMs;
  }
  get accel(): Accel | undefined {
    return this.#info.accel;
  }
  get memory(): MemoryUsage | undefined {
    return this.#info.memory;
  }
  /** The tenant it belongs to; null: an admin's. */
  get tenant(): string | null {
    return this.#info.tenant;
  }

  /** Its own access token: this sandbox's runtime API only (exec, files, PTY, ports); undefined when this handle was opened with it. */
  get token(): string | undefined {
    return this.#info.token;
  }

  /** A token that may only fork this sandbox (hand it to an agent inside to fork itself). */
  get forkToken(): string | undefined {
    return this.#info.forkToken;
  }

  /** Paused with its memory freed (saved to disk); `resume()` restores it. */
  get hibernated(): boolean {
    return this.#info.hibernated;
  }

  /** An interactive terminal (default: sh) over mitosd's WebSocket exec route. */
  createPty(opts: PtyOptions = {}): Promise<Pty> {
    return Pty.open(this.#clients.config, this.id, opts);
  }

  private get path(): string {
    return `/v1/sandboxes/${encodeURIComponent(this.id)}`;
  }

  /** Runs `cmd` with `/bin/sh -c` (or directly with `opts.args`) and waits for it to exit. */
  exec(cmd: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.#clients.runtime.exec(this.id, cmd, opts);
  }

  /**
   * Runs a cell in the sandbox's Jupyter kernel (python template): variables
   * persist between calls, and a fork's children inherit them.
   */
  runCode(code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    return this.#clients.runtime.runCode(this.id, code, opts);
  }

  /** Starts another kernel in this sandbox, with variables of its own. */
  async createCodeContext(opts: { language?: string; cwd?: string } = {}): Promise<CodeContext> {
    const body: Record<string, Json> = {};
    if (opts.language) body.language = opts.language;
    if (opts.cwd) body.cwd = opts.cwd;
    return toCodeContext(await this.#clients.http.request("POST", `${this.path}/contexts`, body));
  }

  async listCodeContexts(): Promise<CodeContext[]> {
    const list = await this.#clients.http.request("GET", `${this.path}/contexts`, undefined);
    return Array.isArray(list) ? list.map(toCodeContext) : [];
  }

  /** A fresh kernel under the same id: the context's variables are gone. */
  async restartCodeContext(context: string | CodeContext): Promise<void> {
    await this.#clients.http.request("POST", `${this.contextPath(context)}/restart`, {});
  }

  async removeCodeContext(context: string | CodeContext): Promise<void> {
    await this.#clients.http.request("DELETE", this.contextPath(context), undefined);
  }

  private contextPath(context: string | CodeContext): string {
    return `${this.path}/contexts/${encodeURIComponent(typeof context === "string" ? context : context.id)}`;
  }

  /** Starts `cmd` and returns at once; output still reaches onStdout/onStderr. */
  execBackground(cmd: string, opts: ExecOptions = {}): ExecHandle {
    return new ExecHandle((signal) => this.#clients.runtime.exec(this.id, cmd, { ...opts, signal }), opts.signal);
  }

  /**
   * Forks this sandbox into `count` children with one request: one pause of
   * the source, one capture, `count` copy-on-write children.
   */
  async fork(count = 1, opts: ForkOptions = {}): Promise<Sandbox[]> {
    if (!Number.isInteger(count) || count < 1) {
      throw makeError({
        code: "invalid_input",
        message: `fork count must be a positive integer, got ${count}`,
        remediation: "Pass the number of children to create, e.g. fork(8).",
      });
    }
    const body: Record<string, Json> = { count };
    if (opts.pauseSource !== undefined) body.pause_source = opts.pauseSource;
    const res = await this.#clients.http.post(`${this.path}/fork`, body, { create: true });
    // A server that ignores `count` answers with one sandbox object.
    const infos = isSingle(res) ? [toSandboxInfo(res)] : toForkMany(res).sandboxes;
    return infos.map((info) => new Sandbox(this.#clients, info));
  }

  /**
   * Saves this sandbox (memory, processes, files) to mitosd's disk store with
   * one short pause; it runs on. Create or fork from it any time later, also
   * after a restart: `SandboxServer.fromCheckpoint` / `forkCheckpoint`.
   */
  async checkpoint(opts: { name?: string } = {}): Promise<CheckpointInfo> {
    const body: Record<string, Json> = opts.name === undefined ? {} : { name: opts.name };
    return toCheckpointInfo(await this.#clients.http.post(`${this.path}/checkpoints`, body, { create: true }));
  }

  /** Sets the deadline to `seconds` from now; refused (TimeoutTooLargeError) above the server's ceiling. */
  async setTimeout(seconds: number): Promise<TimeoutInfo> {
    const t = toTimeoutInfo(
      await this.#clients.http.post("/v1/set_timeout", { sandbox: this.id, timeout_seconds: seconds }),
    );
    this.#info = { ...this.#info, deadlineUnix: t.deadlineUnix };
    return t;
  }

  /**
   * Pauses the sandbox. With `hibernate` its RAM is freed as well (saved to
   * disk); `resume()` restores it with its processes and files.
   */
  async pause(opts: { hibernate?: boolean } = {}): Promise<void> {
    await this.#clients.http.post("/v1/pause", { sandbox: this.id, ...(opts.hibernate ? { hibernate: true } : {}) });
    this.#info = { ...this.#info, state: "paused", hibernated: opts.hibernate === true };
  }

  async resume(): Promise<void> {
    await this.#clients.http.post("/v1/resume", { sandbox: this.id });
    this.#info = { ...this.#info, state: "ready", hibernated: false };
  }

  /** Replaces the network policy; it takes effect at once (connections already open stay). */
  async setNetwork(policy: NetworkPolicy): Promise<void> {
    this.#info = toSandboxInfo(await this.#clients.http.put(`${this.path}/network`, networkBody(policy)));
  }

  /** Its network policy; undefined: no network device. */
  get network(): NetworkPolicy | undefined {
    return this.#info.network;
  }

  /**
   * The `host:port` at which mitosd serves guest port `port` of this sandbox
   * (`<port>-<id>.<domain>:<mitosd port>`; no NIC needed). Requests carry the
   * API token, or the port's token from `expose`.
   */
  getHost(port: number): string {
    const domain = this.#info.domain;
    if (!domain) {
      throw makeError({
        code: "unavailable",
        message: "the server named no port domain for this sandbox",
        remediation: "Use the path URL from expose(port), or a mitosd that serves ports (docs/ports.md).",
      });
    }
    return `${port}-${this.id}.${domain}`;
  }

  /** Makes guest port `port` reachable with a token of its own: its URLs and the token. */
  async expose(port: number): Promise<ExposedPort> {
    return toExposedPort(await this.#clients.http.post(`${this.path}/expose/${port}`, {}));
  }

  /** Processes running in the sandbox. */
  processes(): Promise<ProcessInfo[]> {
    return this.#clients.runtime.processes(this.id);
  }

  /** Sends a signal (default SIGTERM) to a process in the sandbox. */
  signal(pid: number, signal = 15): Promise<void> {
    return this.#clients.runtime.signal(this.id, pid, signal);
  }

  async terminate(): Promise<void> {
    await this.#clients.http.delete(this.path);
    this.#info = { ...this.#info, state: "terminated" };
  }

  /** Fetches the sandbox object again and updates this handle's fields. */
  async info(): Promise<SandboxInfo> {
    this.#info = toSandboxInfo(await this.#clients.http.get(this.path));
    return { ...this.#info };
  }

  toJSON(): SandboxInfo {
    return { ...this.#info };
  }
}

function isSingle(v: unknown): boolean {
  return typeof v === "object" && v !== null && "id" in v && !("sandboxes" in v);
}

/** A command started with execBackground(). */
export class ExecHandle {
  readonly #abort = new AbortController();
  readonly #result: Promise<ExecResult>;
  #running = true;

  constructor(run: (signal: AbortSignal) => Promise<ExecResult>, outer?: AbortSignal) {
    if (outer) {
      if (outer.aborted) this.#abort.abort(outer.reason);
      else outer.addEventListener("abort", () => this.#abort.abort(outer.reason), { once: true });
    }
    this.#result = run(this.#abort.signal).finally(() => {
      this.#running = false;
    });
    // The caller may never wait(); keep an early failure from being unhandled.
    this.#result.catch(() => {});
  }

  get running(): boolean {
    return this.#running;
  }

  /** Resolves when the command exits; rejects with CanceledError after kill(). */
  wait(): Promise<ExecResult> {
    return this.#result;
  }

  /** Closes the stream, which makes mitosd kill the command's process group. */
  async kill(): Promise<void> {
    this.#abort.abort();
    await this.#result.then(
      () => {},
      () => {},
    );
  }
}

/** File operations inside one sandbox. */
export class SandboxFiles {
  constructor(
    private readonly runtime: RuntimeClient,
    private readonly sandboxId: string,
  ) {}

  /** The file's bytes. */
  read(path: string): Promise<Uint8Array> {
    return this.runtime.readFile(this.sandboxId, path);
  }

  /** The file decoded as UTF-8. */
  async readText(path: string): Promise<string> {
    return new TextDecoder().decode(await this.read(path));
  }

  /** Creates or replaces the file; strings are written as UTF-8. Returns the bytes written. */
  write(path: string, data: string | Uint8Array, opts: { mode?: number } = {}): Promise<number> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    return this.runtime.writeFile(this.sandboxId, path, bytes, opts.mode ?? 0);
  }

  list(dir: string): Promise<FileInfo[]> {
    return this.runtime.list(this.sandboxId, dir);
  }

  stat(path: string): Promise<FileInfo> {
    return this.runtime.stat(this.sandboxId, path);
  }

  /** Creates the directory and its missing parents. */
  mkdir(path: string): Promise<void> {
    return this.runtime.mkdir(this.sandboxId, path);
  }

  /**
   * Removes a file or a directory with its contents. A missing path is a
   * no-op unless `strict` (then NotFoundError); `recursive: false` refuses a
   * non-empty directory (ConflictError).
   */
  remove(path: string, opts: { recursive?: boolean; strict?: boolean } = {}): Promise<void> {
    return this.runtime.remove(this.sandboxId, path, opts);
  }
}
