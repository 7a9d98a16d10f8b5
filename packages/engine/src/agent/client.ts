// Host side of the guest agent protocol (docs/agent-protocol.md): one
// connection, many concurrent streams, credit-based flow control.

import { randomBytes } from "node:crypto";
import type net from "node:net";
import { AgentGoneError, GuestError, MitosError } from "../errors.js";
import { connectWhenReady } from "../unix-socket.js";
import { PortStream, portError } from "./port-stream.js";
import {
  DEFAULT_WINDOW,
  encodeFrame,
  Fields,
  FieldWriter,
  type Frame,
  FrameDecoder,
  MAX_PAYLOAD,
  MsgType,
  portOpenFields,
  RESYNC_FLUSH_BYTES,
  ResyncScanner,
  SESSION_LEN,
  STDIN_WINDOW,
  Tag,
} from "./protocol.js";
import { InputWindow, OutputRate, OutputWindow } from "./windows.js";

export interface AgentInfo {
  version: string;
  uptimeMs: number;
  memTotal: number;
  memAvailable: number;
  bootId: string;
  sandboxId: string;
  hostname: string;
}

export interface ExecRequest {
  /** Run as `/bin/sh -c command`. With a PTY and neither command nor args: the login shell. */
  command?: string;
  /** Run argv directly (takes precedence over `command` when non-empty). */
  args?: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** 0 or absent: no timeout. On expiry the group is killed and exitCode is 124. */
  timeoutMs?: number;
  pty?: { cols: number; rows: number };
  /** Open a stdin pipe fed by `ExecHandle.write`; otherwise stdin is /dev/null. */
  stdin?: boolean;
  uid?: number;
  gid?: number;
  /** Output chunks. A returned promise holds back credit (backpressure) until it settles. */
  onStdout?: (chunk: Buffer) => void | Promise<void>;
  onStderr?: (chunk: Buffer) => void | Promise<void>;
  /** Keep stdout/stderr in the result (default true). */
  collect?: boolean;
}

export interface ExecResult {
  exitCode: number;
  signal: number | undefined;
  timedOut: boolean;
  durationMs: number;
  stdout: Buffer;
  stderr: Buffer;
}

export interface ExecHandle {
  readonly started: Promise<number>;
  readonly result: Promise<ExecResult>;
  write(data: Buffer | string): Promise<void>;
  closeStdin(): void;
  resize(cols: number, rows: number): void;
  signal(signal: number): void;
}

export type FileType = "file" | "dir" | "symlink" | "other";

export interface FileInfo {
  name: string;
  path: string;
  type: FileType;
  size: number;
  /** Permission bits with setuid, setgid and sticky (st_mode & 0o7777). */
  mode: number;
  /** Modification time, unix seconds. */
  mtime: number;
  /** The nanoseconds part of the modification time. */
  mtimeNsec: number;
  uid: number;
  gid: number;
  /** A symlink's target as stored in the link (may be relative to its directory). */
  target?: string;
}

/** Who owns what WRITE_OPEN and MKDIR create (the agent runs as root). */
export interface FileOwner {
  uid: number;
  gid: number;
}

export interface ProcessInfo {
  pid: number;
  ppid: number;
  command: string;
  state: string;
  rssBytes: number;
  /** CPU time over the process's lifetime, as `ps` %CPU (100 = one CPU busy). */
  cpuPercent: number;
}

export interface OpenPortOptions {
  /** Connect timeout in the guest (ms); 0 = none. Default: the agent's, 10 s. */
  timeoutMs?: number;
  /**
   * Keep the writable side open after the guest program closed its side
   * (default false: like a net.Socket, the forward then ends its side too).
   */
  allowHalfOpen?: boolean;
}

/** Who a restored guest now is; `signal: false` leaves its registered processes unsignalled (docs/agent-protocol.md). */
export interface NoticeIdentity {
  sandboxId: string;
  hostname: string;
  signal?: boolean;
}

export interface ForkNotifyResult {
  reseeded: boolean;
  notified: number;
  clockStepNs: bigint;
}

interface StreamHandler {
  onFrame(frame: Frame): void;
  fail(err: Error): void;
  /** Called when the stream is given up on (the agent stopped answering). */
  abandon?(): void;
}

const TYPE_NAMES: Record<number, FileType> = { 1: "file", 2: "dir", 3: "symlink", 4: "other" };
const WRITE_CHUNK = 256 * 1024;
const DEFAULT_CALL_TIMEOUT_MS = 30_000;
/** Stream-0 messages kept for diagnosis; a chatty or hostile agent cannot grow the list. */
const MAX_EVENTS = 64;
/** Resync is allowed (agent-protocol.md), but this much garbage means the channel is not an agent. */
const MAX_GARBAGE_BYTES = 1 << 20;
/**
 * What a reconnect may throw away before the agent's answer: a dead host's
 * unread output (each of its streams up to its credit window) and whatever
 * QEMU and the kernel buffered. Beyond this the channel is not converging.
 */
const MAX_RESYNC_DISCARD = 64 << 20;
/** A reconnect repeats its flush + HELLO this often until answered. */
const RESYNC_RETRY_MS = 1000;
let flushBytes: Buffer | undefined;

export interface AgentClientOptions {
  /** Context attached to errors (sandbox id, console log path). */
  context?: Record<string, unknown>;
  /** Timeout for unary calls and for liveness pings during exec and file streams (ms). */
  callTimeoutMs?: number;
  /** Exec output taken from the guest per second, all streams together (default DEFAULT_OUTPUT_RATE). */
  outputBytesPerSecond?: number;
}

/**
 * 32 MiB/s of exec output per sandbox: far above what a person or a log reads
 * (1 GiB in 32 s), well below what a KVM guest could push through mitosd.
 */
export const DEFAULT_OUTPUT_RATE = 32 << 20;

export class AgentClient {
  private readonly decoder = new FrameDecoder();
  private readonly streams = new Map<number, StreamHandler>();
  private nextId = 1;
  private gone: AgentGoneError | undefined;
  private readonly context: Record<string, unknown>;
  private readonly callTimeoutMs: number;
  /** Agent-level errors reported on stream 0 (protocol trouble). */
  readonly events: string[] = [];
  /**
   * Streams with no deadline of their own (exec, file transfer): while any is
   * open, HELLO is sent every few seconds, and if one goes unanswered for
   * callTimeoutMs they fail instead of waiting forever on a hung guest.
   */
  private readonly watched = new Set<number>();
  private watchdog: NodeJS.Timeout | undefined;
  private pinging = false;
  private readonly drainWaiters = new Set<() => void>();
  /** Exec output's rate limit (windows.ts OutputRate). */
  private readonly outputRate: OutputRate;

  private constructor(
    private readonly socket: net.Socket,
    options: AgentClientOptions,
  ) {
    this.context = options.context ?? {};
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.outputRate = new OutputRate(options.outputBytesPerSecond ?? DEFAULT_OUTPUT_RATE);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (err) => this.close(`agent socket error: ${err.message}`));
    socket.on("close", () => this.close("agent connection closed (VM exited or agent died)"));
  }

  /** Connects to the agent's Unix socket (QEMU chardev), retrying until it exists. */
  static async connect(path: string, deadlineMs: number, options: AgentClientOptions = {}): Promise<AgentClient> {
    try {
      return new AgentClient(await connectWhenReady(path, deadlineMs, 20), options);
    } catch (err) {
      throw new AgentGoneError(`cannot connect to ${path}: ${(err as Error).message}`, options.context);
    }
  }

  /**
   * Re-opens a channel another host process (a mitosd that died) left
   * mid-conversation, within `deadlineMs` (a duration, as for `connect`).
   * Sends RESYNC_FLUSH_BYTES zero bytes, so a frame the dead host was cut off
   * writing is completed or abandoned in the agent's decoder, then HELLO with a
   * fresh random SESSION on a random stream id >= 0x80000000; the agent
   * detaches the streams of the previous session (their commands keep
   * running, their output is dropped). Everything received before the OK that
   * echoes that SESSION on that stream (stale output of the dead host's
   * streams, a frame cut in half) is discarded, not counted as a protocol
   * violation, up to 64 MiB. The flush + HELLO are repeated every second (with
   * the same SESSION, which the agent takes as a retry) while unanswered and
   * the previous ones have been written. Afterwards the client is an ordinary
   * one.
   */
  static async reconnect(path: string, deadlineMs: number, options: AgentClientOptions = {}): Promise<AgentClient> {
    const until = Date.now() + deadlineMs;
    const socket = await connectWhenReady(path, deadlineMs, 20).catch((err: Error) => {
      throw new AgentGoneError(`cannot connect to ${path}: ${err.message}`, options.context);
    });
    const session = randomBytes(SESSION_LEN);
    const stream = (0x8000_0000 | randomBytes(4).readUInt32BE(0)) >>> 0;
    let rest: Buffer;
    try {
      rest = await resync(socket, stream, session, until, deadlineMs, options.context ?? {});
    } catch (err) {
      socket.destroy();
      throw err;
    }
    const client = new AgentClient(socket, options);
    if (rest.length > 0) client.onData(rest);
    socket.resume(); // paused by resync() between its listeners and ours: no byte is lost
    return client;
  }

  get closed(): boolean {
    return this.gone !== undefined;
  }

  /** Fails every pending and future call; idempotent. */
  close(reason: string): void {
    if (this.gone) return;
    this.gone = new AgentGoneError(reason, this.context);
    if (this.watchdog) clearInterval(this.watchdog);
    this.socket.destroy();
    const handlers = [...this.streams.values()];
    this.streams.clear();
    for (const h of handlers) h.fail(this.gone);
  }

  /**
   * Waits until the agent answers HELLO. Data sent before the guest opens its
   * port may be dropped, so HELLO is retried with a short per-try timeout.
   */
  waitReady(deadlineMs: number): Promise<AgentInfo> {
    return this.untilAnswered(deadlineMs, (tryMs) => this.hello(tryMs));
  }

  /**
   * FORK_NOTIFY for a VM that has just been restored (or claimed from a warm
   * pool), retried like waitReady: it is also the first sign of life, so a
   * separate HELLO would only add a round trip through a cold guest.
   */
  notifyRestored(identity: NoticeIdentity, deadlineMs: number): Promise<ForkNotifyResult> {
    return this.untilAnswered(deadlineMs, (tryMs) => this.forkNotify(identity, tryMs));
  }

  /** Repeats `call` with short per-try timeouts until it answers; other failures are final. */
  private async untilAnswered<T>(deadlineMs: number, call: (tryMs: number) => Promise<T>): Promise<T> {
    const until = Date.now() + deadlineMs;
    for (;;) {
      try {
        return await call(Math.min(1000, Math.max(50, until - Date.now())));
      } catch (err) {
        if (!(err instanceof MitosError && err.code === "unavailable") || err instanceof AgentGoneError) throw err;
        if (Date.now() >= until) {
          throw new AgentGoneError(`guest agent did not answer within ${deadlineMs} ms`, this.context);
        }
      }
    }
  }

  async hello(timeoutMs = this.callTimeoutMs): Promise<AgentInfo> {
    const f = await this.unary(MsgType.HELLO, Buffer.alloc(0), "agent", timeoutMs);
    return {
      version: f.str(Tag.VERSION) ?? "",
      uptimeMs: f.int(Tag.UPTIME_MS) ?? 0,
      memTotal: f.int(Tag.MEM_TOTAL) ?? 0,
      memAvailable: f.int(Tag.MEM_AVAILABLE) ?? 0,
      bootId: f.str(Tag.BOOT_ID) ?? "",
      sandboxId: f.str(Tag.SANDBOX_ID) ?? "",
      hostname: f.str(Tag.HOSTNAME) ?? "",
    };
  }

  exec(req: ExecRequest): ExecHandle {
    const w = new FieldWriter();
    if (req.args && req.args.length > 0) for (const a of req.args) w.str(Tag.ARG, a);
    else if (req.command !== undefined) w.str(Tag.CMD, req.command);
    else if (!req.pty)
      throw new MitosError("invalid_input", "exec needs a command or args", {
        remediation: "Pass command or args (only a PTY may omit both: it gets the login shell).",
      });
    for (const [k, v] of Object.entries(req.env ?? {})) {
      if (k === "" || k.includes("=")) {
        throw new MitosError("invalid_input", `bad environment variable name ${JSON.stringify(k)}`, {
          remediation: "Environment names must be non-empty and contain no '='.",
        });
      }
      w.str(Tag.ENV, `${k}=${v}`);
    }
    if (req.cwd) w.str(Tag.CWD, req.cwd);
    if (req.timeoutMs) w.int(Tag.TIMEOUT_MS, Math.ceil(req.timeoutMs));
    if (req.pty) w.int(Tag.PTY_COLS, req.pty.cols).int(Tag.PTY_ROWS, req.pty.rows);
    if (req.stdin) w.int(Tag.STDIN_OPEN, 1);
    if (req.uid !== undefined) w.int(Tag.UID, req.uid);
    if (req.gid !== undefined) w.int(Tag.GID, req.gid);
    w.int(Tag.WINDOW, DEFAULT_WINDOW);

    const id = this.allocId();
    const collect = req.collect !== false;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let started!: { resolve: (pid: number) => void; reject: (e: Error) => void };
    let done!: { resolve: (r: ExecResult) => void; reject: (e: Error) => void };
    const startedP = new Promise<number>((resolve, reject) => {
      started = { resolve, reject };
    });
    const resultP = new Promise<ExecResult>((resolve, reject) => {
      done = { resolve, reject };
    });
    startedP.catch(() => {});
    // Output callbacks run in order; credit goes back once each has settled.
    let chain: Promise<void> = Promise.resolve();
    const window = new OutputWindow();
    const stdin = new InputWindow();
    const deliver = (chunk: Buffer, sink: Buffer[], cb: ExecRequest["onStdout"]) => {
      if (!window.take(chunk.length)) return this.violation(`exec stream ${id} sent output beyond its credit`);
      this.outputRate.add(chunk.length);
      if (collect) sink.push(chunk);
      chain = chain.then(async () => {
        if (cb) await cb(chunk);
        // Over the sandbox's output rate: the credit (and so the guest's next output) waits.
        const wait = this.outputRate.delay();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait).unref());
        this.grant(id, window, chunk.length);
      });
    };
    this.streams.set(id, {
      onFrame: (f) => {
        switch (f.type) {
          case MsgType.STARTED:
            started.resolve(Fields.parse(f.payload).int(Tag.PID) ?? 0);
            break;
          case MsgType.STDOUT:
            deliver(f.payload, out, req.onStdout);
            break;
          case MsgType.STDERR:
            deliver(f.payload, err, req.onStderr);
            break;
          case MsgType.STDIN_ACK:
            stdin.ack(Fields.parse(f.payload).int(Tag.BYTES) ?? 0);
            break;
          case MsgType.EXIT: {
            this.streams.delete(id);
            stdin.fail(new MitosError("conflict", "the command has exited", { remediation: "Start a new command." }));
            const x = Fields.parse(f.payload);
            const result: ExecResult = {
              exitCode: x.int(Tag.EXIT_CODE) ?? -1,
              signal: x.int(Tag.SIGNAL),
              timedOut: x.int(Tag.TIMED_OUT) === 1,
              durationMs: x.int(Tag.DURATION_MS) ?? 0,
              stdout: Buffer.alloc(0),
              stderr: Buffer.alloc(0),
            };
            chain.then(
              () => done.resolve({ ...result, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }),
              (e: Error) => done.reject(e),
            );
            break;
          }
          case MsgType.ERROR: {
            this.streams.delete(id);
            const e = this.guestError("exec", f.payload, { command: req.command ?? req.args });
            started.reject(e);
            stdin.fail(e);
            done.reject(e);
            break;
          }
        }
      },
      fail: (e) => {
        started.reject(e);
        stdin.fail(e);
        done.reject(e);
      },
      // If the guest comes back, the command must not run on unobserved.
      abandon: () => this.send(MsgType.SIGNAL, id, new FieldWriter().int(Tag.SIGNAL, 9).build()),
    });
    this.watch(id);
    this.send(MsgType.EXEC, id, w.build());

    return {
      started: startedP,
      result: resultP,
      write: async (data) => {
        let buf = typeof data === "string" ? Buffer.from(data) : data;
        while (buf.length > 0) {
          const n = await stdin.reserve(Math.min(buf.length, STDIN_WINDOW));
          if (!this.streams.has(id))
            throw (
              this.gone ?? new MitosError("conflict", "the command has exited", { remediation: "Start a new command." })
            );
          this.send(MsgType.STDIN, id, buf.subarray(0, n));
          buf = buf.subarray(n);
        }
      },
      closeStdin: () => {
        if (this.streams.has(id)) this.send(MsgType.STDIN_CLOSE, id);
      },
      resize: (cols, rows) => {
        if (this.streams.has(id))
          this.send(MsgType.RESIZE, id, new FieldWriter().int(Tag.PTY_COLS, cols).int(Tag.PTY_ROWS, rows).build());
      },
      signal: (sig) => {
        if (this.streams.has(id)) this.send(MsgType.SIGNAL, id, new FieldWriter().int(Tag.SIGNAL, sig).build());
      },
    };
  }

  /** Reads a file (or a range of it); `onData` streams chunks with backpressure. */
  async readFile(
    path: string,
    opts: { offset?: number; length?: number; onData?: (chunk: Buffer) => void | Promise<void> } = {},
  ): Promise<Buffer> {
    const w = new FieldWriter().str(Tag.PATH, path);
    if (opts.offset) w.int(Tag.OFFSET, opts.offset);
    if (opts.length) w.int(Tag.LENGTH, opts.length);
    const id = this.allocId();
    const chunks: Buffer[] = [];
    let chain: Promise<void> = Promise.resolve();
    const window = new OutputWindow();
    return new Promise<Buffer>((resolve, reject) => {
      this.streams.set(id, {
        onFrame: (f) => {
          if (f.type === MsgType.DATA) {
            if (!window.take(f.payload.length)) return this.violation(`read stream ${id} sent data beyond its credit`);
            if (!opts.onData) chunks.push(f.payload);
            chain = chain.then(async () => {
              if (opts.onData) await opts.onData(f.payload);
              this.grant(id, window, f.payload.length);
            });
          } else if (f.type === MsgType.OK) {
            this.streams.delete(id);
            chain.then(() => resolve(Buffer.concat(chunks)), reject);
          } else if (f.type === MsgType.ERROR) {
            this.streams.delete(id);
            reject(this.guestError("file", f.payload, { path }));
          }
        },
        fail: reject,
      });
      this.watch(id);
      this.send(MsgType.READ, id, w.build());
    });
  }

  /**
   * Writes a file from a buffer or a stream of chunks; resolves with bytes
   * written. Missing parent directories are created; with `owner`, they and
   * the file belong to that uid:gid. If `data` throws, what was written stays
   * and the error is rethrown.
   */
  async writeFile(
    path: string,
    data: Buffer | string | AsyncIterable<Buffer>,
    opts: { mode?: number; append?: boolean; owner?: FileOwner } = {},
  ): Promise<number> {
    const w = new FieldWriter().str(Tag.PATH, path);
    if (opts.mode !== undefined) w.int(Tag.MODE, opts.mode);
    if (opts.append) w.int(Tag.APPEND, 1);
    if (opts.owner) w.int(Tag.UID, opts.owner.uid).int(Tag.GID, opts.owner.gid);
    const id = this.allocId();
    let failed: Error | undefined;
    const final = new Promise<Fields>((resolve, reject) => {
      this.streams.set(id, {
        onFrame: (f) => {
          this.streams.delete(id);
          if (f.type === MsgType.OK) resolve(Fields.parse(f.payload));
          else {
            failed = this.guestError("file", f.payload, { path });
            reject(failed);
          }
        },
        fail: (e) => {
          failed = e;
          reject(e);
        },
      });
    });
    final.catch(() => {});
    this.watch(id);
    this.send(MsgType.WRITE_OPEN, id, w.build());
    const chunks: AsyncIterable<Buffer> | Iterable<Buffer> =
      typeof data === "string" || Buffer.isBuffer(data) ? [Buffer.from(data)] : data;
    try {
      for await (const chunk of chunks) {
        for (let off = 0; off < chunk.length && !failed; off += WRITE_CHUNK) {
          await this.sendAndDrain(MsgType.WRITE_DATA, id, chunk.subarray(off, off + WRITE_CHUNK));
        }
        if (failed) break;
      }
    } catch (err) {
      // The source failed: close the guest file rather than leave it open.
      if (!failed && !this.gone) this.send(MsgType.WRITE_CLOSE, id);
      await final.catch(() => {});
      throw err;
    }
    if (!failed) this.send(MsgType.WRITE_CLOSE, id);
    const fields = await final;
    return fields.int(Tag.BYTES) ?? 0;
  }

  async list(path: string): Promise<FileInfo[]> {
    const entries: FileInfo[] = [];
    await this.call(MsgType.LIST, new FieldWriter().str(Tag.PATH, path).build(), "file", { path }, (f) => {
      if (f.type === MsgType.ENTRY) entries.push(toFileInfo(Fields.parse(f.payload)));
    });
    return entries;
  }

  async stat(path: string): Promise<FileInfo> {
    return toFileInfo(
      await this.unary(MsgType.STAT, new FieldWriter().str(Tag.PATH, path).build(), "file", undefined, { path }),
    );
  }

  /** mkdir -p; an existing directory is fine. With `owner`, what it creates belongs to that uid:gid. */
  async mkdir(path: string, mode?: number, owner?: FileOwner): Promise<void> {
    const w = new FieldWriter().str(Tag.PATH, path);
    if (mode !== undefined) w.int(Tag.MODE, mode);
    if (owner) w.int(Tag.UID, owner.uid).int(Tag.GID, owner.gid);
    await this.unary(MsgType.MKDIR, w.build(), "file", undefined, { path });
  }

  async remove(path: string, recursive = false): Promise<void> {
    const w = new FieldWriter().str(Tag.PATH, path);
    if (recursive) w.int(Tag.RECURSIVE, 1);
    await this.unary(MsgType.REMOVE, w.build(), "file", undefined, { path });
  }

  async rename(from: string, to: string): Promise<void> {
    await this.unary(MsgType.RENAME, new FieldWriter().str(Tag.PATH, from).str(Tag.TO, to).build(), "file", undefined, {
      path: from,
      to,
    });
  }

  async processes(): Promise<ProcessInfo[]> {
    const procs: ProcessInfo[] = [];
    await this.call(MsgType.PROCESSES, Buffer.alloc(0), "agent", {}, (f) => {
      if (f.type !== MsgType.PROC) return;
      const p = Fields.parse(f.payload);
      procs.push({
        pid: p.int(Tag.PID) ?? 0,
        ppid: p.int(Tag.PPID) ?? 0,
        command: p.str(Tag.COMMAND) ?? "",
        state: p.str(Tag.STATE) ?? "",
        rssBytes: p.int(Tag.RSS) ?? 0,
        cpuPercent: (p.int(Tag.CPU_PERMILLE) ?? 0) / 10,
      });
    });
    return procs;
  }

  async kill(pid: number, signal: number): Promise<void> {
    await this.unary(
      MsgType.KILL,
      new FieldWriter().int(Tag.PID, pid).int(Tag.SIGNAL, signal).build(),
      "agent",
      undefined,
      {
        pid,
      },
    );
  }

  /**
   * Tells a freshly restored guest it is a new machine: fresh entropy, the
   * host's clock, its own identity. Fails closed if the reseed is not confirmed.
   */
  async forkNotify(identity: NoticeIdentity, timeoutMs?: number): Promise<ForkNotifyResult> {
    const nowNs = BigInt(Date.now()) * 1_000_000n;
    const w = new FieldWriter()
      .bytes(Tag.ENTROPY, randomBytes(64))
      .int(Tag.TIME_NS, nowNs)
      .str(Tag.SANDBOX_ID, identity.sandboxId)
      .str(Tag.HOSTNAME, identity.hostname);
    if (identity.signal === false) w.int(Tag.SIGNAL, 0);
    const f = await this.unary(MsgType.FORK_NOTIFY, w.build(), "agent", timeoutMs);
    const result = {
      reseeded: f.int(Tag.RESEEDED) === 1,
      notified: f.int(Tag.NOTIFIED) ?? 0,
      clockStepNs: f.bigint(Tag.CLOCK_STEP_NS) ?? 0n,
    };
    if (!result.reseeded) {
      throw new MitosError("fork_failed", "guest did not confirm the entropy reseed after restore", {
        remediation:
          "The VM is not safe to hand out and was refused. Retry; if it persists, rebuild the template image.",
        context: this.context,
      });
    }
    return result;
  }

  /** Steps the guest's wall clock to the host's (a paused VM's clock falls behind). */
  async setClock(): Promise<bigint> {
    const f = await this.unary(
      MsgType.SET_CLOCK,
      new FieldWriter().int(Tag.TIME_NS, BigInt(Date.now()) * 1_000_000n).build(),
      "agent",
    );
    return f.bigint(Tag.CLOCK_STEP_NS) ?? 0n;
  }

  /**
   * Opens a TCP connection to `port` on the guest's loopback (127.0.0.1, and
   * ::1 if refused there), carried over the agent channel, so the guest needs
   * no network device. Resolves once connected. The stream honours
   * backpressure both ways; `end()` half-closes (the guest program reads EOF),
   * `destroy()` closes the guest socket at once. Open forwards end when the
   * sandbox is forked or its agent session is taken over (they belong to this
   * connection). Rejects with MitosError `invalid_input` (port not in
   * 1..65535), `unavailable` (connection refused: nothing listens; connect
   * timed out; agent gone) or `too_many_streams`; later errors (the guest
   * program reset the connection, the agent went away) destroy the stream
   * with the same codes.
   */
  async openPort(port: number, opts: OpenPortOptions = {}): Promise<PortStream> {
    let payload: Buffer;
    try {
      payload = portOpenFields({ port, timeoutMs: opts.timeoutMs });
    } catch (err) {
      throw new MitosError("invalid_input", (err as Error).message, {
        remediation: "Pass a TCP port number from 1 to 65535 and a timeoutMs >= 0.",
        context: { ...this.context, port },
      });
    }
    const id = this.allocId();
    const stream = new PortStream(
      port,
      {
        send: (type, p) => {
          this.send(type, id, p);
        },
        violation: (reason) => this.violation(reason),
      },
      opts.allowHalfOpen ?? false,
    );
    return await new Promise<PortStream>((resolve, reject) => {
      let started = false;
      const end = (err?: Error) => {
        this.streams.delete(id);
        if (started) stream.finished(err);
        else
          reject(
            err ??
              new MitosError("internal", `agent ended port stream ${id} before connecting`, {
                remediation:
                  "The guest agent broke the protocol. Retry; if it persists, check the sandbox console log.",
                context: { ...this.context, port },
              }),
          );
      };
      this.streams.set(id, {
        onFrame: (f) => {
          switch (f.type) {
            case MsgType.STARTED:
              if (started) return;
              started = true;
              stream.address = Fields.parse(f.payload).str(Tag.ADDRESS) ?? "";
              resolve(stream);
              break;
            case MsgType.DATA:
              stream.received(f.payload);
              break;
            case MsgType.PORT_ACK:
              stream.acked(Fields.parse(f.payload).int(Tag.BYTES) ?? -1);
              break;
            case MsgType.PORT_EOF:
              stream.guestEnded();
              break;
            case MsgType.OK:
              end();
              break;
            case MsgType.ERROR: {
              let errno = 0;
              let message = `port ${port}: guest agent reported an error`;
              try {
                const e = Fields.parse(f.payload);
                errno = e.int(Tag.ERRNO) ?? 0;
                message = e.str(Tag.MESSAGE) ?? message;
              } catch {
                message = `port ${port}: guest agent sent a malformed error frame`;
              }
              end(portError(errno, message, port, this.context));
              break;
            }
          }
        },
        fail: (err) => (started ? stream.finished(err) : reject(err)),
        abandon: () => this.send(MsgType.PORT_CLOSE, id),
      });
      this.watch(id);
      this.send(MsgType.PORT_OPEN, id, payload);
    });
  }

  // --- plumbing ---

  private unary(
    type: number,
    payload: Buffer,
    op: "exec" | "file" | "agent",
    timeoutMs?: number,
    context: Record<string, unknown> = {},
  ): Promise<Fields> {
    return this.call(type, payload, op, context, undefined, timeoutMs);
  }

  /** Sends one request and resolves with the fields of its final OK frame. */
  private call(
    type: number,
    payload: Buffer,
    op: "exec" | "file" | "agent",
    context: Record<string, unknown>,
    onFrame?: (f: Frame) => void,
    timeoutMs = this.callTimeoutMs,
  ): Promise<Fields> {
    const id = this.allocId();
    return new Promise<Fields>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.streams.delete(id);
        reject(
          new MitosError("unavailable", `guest agent did not answer within ${timeoutMs} ms`, {
            remediation: "The guest may be overloaded or hung. Retry, or terminate the sandbox and create a new one.",
            context: { ...this.context, ...context },
          }),
        );
      }, timeoutMs);
      this.streams.set(id, {
        onFrame: (f) => {
          if (f.type === MsgType.OK) {
            clearTimeout(timer);
            this.streams.delete(id);
            try {
              resolve(Fields.parse(f.payload));
            } catch (e) {
              reject(e);
            }
          } else if (f.type === MsgType.ERROR) {
            clearTimeout(timer);
            this.streams.delete(id);
            reject(this.guestError(op, f.payload, context));
          } else onFrame?.(f);
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.send(type, id, payload);
    });
  }

  private guestError(op: "exec" | "file" | "agent", payload: Buffer, context: Record<string, unknown>): GuestError {
    let errno = 0;
    let message = "guest agent reported an error";
    try {
      const f = Fields.parse(payload);
      errno = f.int(Tag.ERRNO) ?? 0;
      message = f.str(Tag.MESSAGE) ?? message;
    } catch {
      message = "guest agent sent a malformed error frame";
    }
    return new GuestError(op, errno, message, { ...this.context, ...context });
  }

  private allocId(): number {
    if (this.gone) throw this.gone;
    for (;;) {
      const id = this.nextId;
      this.nextId = this.nextId >= 0xffff_fff0 ? 1 : this.nextId + 1;
      if (!this.streams.has(id)) return id;
    }
  }

  private send(type: number, stream: number, payload: Buffer = Buffer.alloc(0)): boolean {
    if (this.gone) throw this.gone;
    if (payload.length > MAX_PAYLOAD) throw new RangeError("payload too large");
    return this.socket.write(encodeFrame(type, stream, payload));
  }

  private async sendAndDrain(type: number, stream: number, payload: Buffer): Promise<void> {
    if (!this.send(type, stream, payload)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.socket.off("drain", done);
          this.socket.off("close", done);
          this.drainWaiters.delete(done);
          resolve();
        };
        this.socket.on("drain", done);
        this.socket.on("close", done);
        this.drainWaiters.add(done);
      });
    }
  }

  private watch(id: number): void {
    this.watched.add(id);
    if (this.watchdog) return;
    this.watchdog = setInterval(() => this.ping(), Math.max(1000, Math.min(10_000, this.callTimeoutMs / 3)));
    this.watchdog.unref();
  }

  private ping(): void {
    for (const id of this.watched) if (!this.streams.has(id)) this.watched.delete(id);
    if (this.watched.size === 0) {
      clearInterval(this.watchdog);
      this.watchdog = undefined;
      return;
    }
    if (this.pinging || this.gone) return;
    this.pinging = true;
    this.hello()
      .catch((err: Error) => {
        if (!(err instanceof AgentGoneError)) this.abandonWatched();
      })
      .finally(() => {
        this.pinging = false;
      });
  }

  /** Fails every watched stream: the agent did not answer a liveness ping in time. */
  private abandonWatched(): void {
    const err = new MitosError(
      "unavailable",
      `guest agent stopped answering (no reply to a liveness ping within ${this.callTimeoutMs} ms)`,
      {
        remediation: "The guest is hung or starved of CPU. Retry later, or terminate the sandbox and create a new one.",
        context: this.context,
      },
    );
    for (const id of [...this.watched]) {
      const h = this.streams.get(id);
      this.streams.delete(id);
      this.watched.delete(id);
      try {
        h?.abandon?.();
      } catch {
        // the connection is gone; nothing to tell the guest
      }
      h?.fail(err);
    }
    for (const wake of [...this.drainWaiters]) wake();
  }

  /** Gives back output credit for `n` consumed bytes once a quarter window has built up. */
  private grant(id: number, window: OutputWindow, n: number): void {
    const bytes = window.consumed(n);
    if (bytes > 0 && this.streams.has(id) && !this.gone) {
      this.send(MsgType.CREDIT, id, new FieldWriter().int(Tag.BYTES, bytes).build());
    }
  }

  /** The guest broke the protocol: drop the connection (failing its calls) rather than trust it further. */
  private violation(reason: string): void {
    this.close(`protocol violation by the guest agent: ${reason}`);
  }

  private onData(chunk: Buffer): void {
    if (this.gone) return;
    // A guest is not trusted: whatever it sends may close its own connection, never throw out of here.
    try {
      for (const f of this.decoder.push(chunk)) {
        if (this.gone) return;
        if (f.stream === 0) {
          if (this.events.length >= MAX_EVENTS) this.events.shift();
          this.events.push(Fields.parse(f.payload).str(Tag.MESSAGE) ?? `frame type ${f.type} on stream 0`);
          continue;
        }
        // Unknown ids are dropped: late answers to calls that timed out are normal.
        this.streams.get(f.stream)?.onFrame(f);
      }
      if (this.decoder.dropped > MAX_GARBAGE_BYTES) {
        this.violation(`${this.decoder.dropped} bytes that are not frames`);
      }
    } catch (err) {
      this.violation(`malformed frame (${(err as Error).message})`);
    }
  }
}

/** Flush + HELLO(SESSION) until the matching OK; resolves with the bytes after it. */
function resync(
  socket: net.Socket,
  stream: number,
  session: Buffer,
  until: number,
  deadlineMs: number,
  context: Record<string, unknown>,
): Promise<Buffer> {
  flushBytes ??= Buffer.alloc(RESYNC_FLUSH_BYTES);
  const flush = flushBytes;
  const hello = encodeFrame(MsgType.HELLO, stream, new FieldWriter().bytes(Tag.SESSION, session).build());
  const scanner = new ResyncScanner(stream, session);
  const consoleLog = typeof context.console_log === "string" ? context.console_log : "none given";
  return new Promise<Buffer>((resolve, reject) => {
    let sent = 0;
    const send = () => {
      // Only once what was sent before is written: a slow guest gets no pile of flushes.
      if (socket.writableLength > 0 || socket.destroyed) return;
      sent++;
      socket.write(flush);
      socket.write(hello);
    };
    const finish = (err: Error | undefined, rest?: Buffer) => {
      clearInterval(retry);
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) return reject(err);
      socket.pause();
      resolve(rest ?? Buffer.alloc(0));
    };
    const onData = (chunk: Buffer) => {
      const rest = scanner.push(chunk);
      if (rest) return finish(undefined, rest);
      if (scanner.discarded > MAX_RESYNC_DISCARD) {
        finish(
          new AgentGoneError(
            `agent channel sent ${scanner.discarded} bytes without answering the resync (limit ${MAX_RESYNC_DISCARD}); console log: ${consoleLog}`,
            context,
          ),
        );
      }
    };
    const onError = (err: Error) =>
      finish(new AgentGoneError(`agent socket error during resync: ${err.message}`, context));
    const onClose = () =>
      finish(new AgentGoneError(`agent connection closed during resync; console log: ${consoleLog}`, context));
    const timer = setTimeout(
      () =>
        finish(
          new AgentGoneError(
            `agent did not answer a resync within ${deadlineMs} ms (${sent} tries, ${scanner.discarded} bytes discarded); console log: ${consoleLog}`,
            context,
          ),
        ),
      Math.max(0, until - Date.now()),
    );
    const retry = setInterval(send, RESYNC_RETRY_MS);
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("close", onClose);
    send();
  });
}

function toFileInfo(f: Fields): FileInfo {
  const target = f.str(Tag.TARGET);
  return {
    name: f.str(Tag.NAME) ?? "",
    path: f.str(Tag.PATH) ?? "",
    type: TYPE_NAMES[f.int(Tag.TYPE) ?? 4] ?? "other",
    size: f.int(Tag.SIZE) ?? 0,
    mode: f.int(Tag.MODE) ?? 0,
    mtime: f.int(Tag.MTIME) ?? 0,
    mtimeNsec: f.int(Tag.MTIME_NSEC) ?? 0,
    uid: f.int(Tag.UID) ?? 0,
    gid: f.int(Tag.GID) ?? 0,
    ...(target !== undefined ? { target } : {}),
  };
}
