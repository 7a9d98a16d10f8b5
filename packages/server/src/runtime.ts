// The runtime service sandbox.v1.Sandbox (API.md "Runtime"), implemented on
// the engine. The target sandbox is named by the X-Sandbox-Id header.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { type Engine, type FileInfo as EngineFileInfo, type ExecRequest, ID_RE, MitosError } from "@mitos/engine";
import {
  type Chunk,
  ExecExitSchema,
  type ExecResponse,
  type FileInfo,
  FileInfoSchema,
  Sandbox,
  type WriteFileRequest,
} from "@mitos/proto";
import { invalid, toConnectError } from "./errors.js";
import { interactiveExec } from "./interactive-exec.js";
import { listPage } from "./list-page.js";
import type { Metrics } from "./metrics.js";
import { forwardPort } from "./port-forward.js";
import { runCell, toCell } from "./run-code.js";
import { StreamQueue } from "./stream-queue.js";

export interface RuntimeOptions {
  engine: Engine;
  maxExecTimeoutSeconds: number;
  metrics: Metrics;
}

const QUEUE_BYTES = 1 << 20;

type RuntimeImpl = ServiceImpl<typeof Sandbox>;

/** Methods declared in the proto (upstream's service) and not served yet, with the issue that brings each. */
const NOT_YET = {
  archive: "archive transfer",
  watch: "filesystem watches",
  vitals: "guest vitals",
  upload: "tar upload",
  fork: "self-service fork over the runtime service; a sandbox forks itself with POST /v1/sandboxes/{id}/fork and its fork_token (docs/security.md)",
  checkpoint: "self-service checkpoints over the runtime service; checkpoint with POST /v1/sandboxes/{id}/checkpoints",
  extendLifetime: "self-service lifetime over the runtime service; extend with POST /v1/set_timeout",
  budget: "self-service budgets; a tenant key's caps are in GET /v1/limits (docs/security.md)",
} as const satisfies Partial<Record<keyof RuntimeImpl, string>>;

function unimplemented(localName: string, methodName: string): () => never {
  return () => {
    throw new ConnectError(
      `sandbox.v1.Sandbox/${methodName} is not implemented by mitosd yet: ${NOT_YET[localName as keyof typeof NOT_YET]}`,
      Code.Unimplemented,
    );
  };
}

/**
 * Registers the runtime methods. Over HTTP/1.1 the bidi `Exec` cannot run, and
 * its path serves the WebSocket route instead (exec-socket.ts), so it is
 * registered only on the h2c router (`withBidiExec`).
 */
export function registerRuntime(router: ConnectRouter, opts: RuntimeOptions, withBidiExec = false): void {
  const impl = wrap(runtimeImpl(opts), opts.engine) as unknown as Record<string, unknown>;
  for (const m of Sandbox.methods) {
    if (m.localName === "exec" && !withBidiExec) continue;
    router.rpc(m, (impl[m.localName] ?? unimplemented(m.localName, m.name)) as never);
  }
}

type ServedImpl = Omit<RuntimeImpl, keyof typeof NOT_YET>;

function runtimeImpl({ engine, maxExecTimeoutSeconds, metrics }: RuntimeOptions): ServedImpl {
  const sandboxId = (ctx: HandlerContext): string => checkSandboxId(ctx.requestHeader.get("x-sandbox-id"));

  const execRequest = (r: ExecFields): ExecRequest => toExecRequest(r, maxExecTimeoutSeconds);

  return {
    async *execStream(req, ctx) {
      const id = sandboxId(ctx);
      const request = execRequest(req);
      const release = engine.openStream(id);
      try {
        metrics.execs.inc();
        const queue = new StreamQueue<ExecResponse>(QUEUE_BYTES, sizeOfExec);
        // collect: false, so nothing is kept beyond the queue's bound however much the command prints.
        const handle = engine.exec(id, {
          ...request,
          collect: false,
          onStdout: (c) => queue.push(execEvent({ case: "stdout", value: c })),
          onStderr: (c) => queue.push(execEvent({ case: "stderr", value: c })),
        });
        // A client that goes away kills the command's process group.
        const onAbort = () => {
          handle.signal(9);
          queue.end();
        };
        ctx.signal.addEventListener("abort", onAbort, { once: true });
        handle.result.then(
          (r) => {
            void queue
              .push(
                execEvent({
                  case: "exit",
                  value: create(ExecExitSchema, { exitCode: r.exitCode, execTimeMs: r.durationMs, error: "" }),
                }),
              )
              .then(() => queue.end());
          },
          (err: Error) => queue.end(err),
        );
        try {
          yield* queue;
        } finally {
          ctx.signal.removeEventListener("abort", onAbort);
        }
      } finally {
        release();
      }
    },

    async *exec(inputs, ctx) {
      metrics.execs.inc();
      yield* interactiveExec(engine, sandboxId(ctx), inputs, maxExecTimeoutSeconds, ctx.signal);
    },

    async *runCodeStream(req, ctx) {
      yield* runCell(engine, sandboxId(ctx), toCell(req, maxExecTimeoutSeconds), ctx.signal);
    },

    async *runCode(inputs, ctx) {
      const it = inputs[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || first.value.msg.case !== "open") {
        throw invalid("RunCode must start with {open:{code, …}}", "Send the open message first, then stdin.");
      }
      const cell = toCell(first.value.msg.value, maxExecTimeoutSeconds);
      async function* stdin(): AsyncIterable<Uint8Array> {
        for (let n = await it.next(); !n.done; n = await it.next()) {
          if (n.value.msg.case === "stdin") yield n.value.msg.value;
          else throw invalid("RunCode got a second open message", "Send one open, then only stdin messages.");
        }
      }
      yield* runCell(engine, sandboxId(ctx), cell, ctx.signal, stdin());
    },

    async *portForward(inputs, ctx) {
      yield* forwardPort(engine, sandboxId(ctx), inputs, ctx.signal);
    },

    async *readFile(req, ctx) {
      const id = sandboxId(ctx);
      const path = guestPath(req.path, "path");
      const release = engine.openStream(id);
      try {
        const queue = new StreamQueue<Chunk>(QUEUE_BYTES, (m) => m.data.length);
        ctx.signal.addEventListener("abort", () => queue.end(), { once: true });
        engine
          .agent(id)
          .readFile(path, { onData: (c) => queue.push(readEvent(c, false)) })
          .then(
            () => queue.push(readEvent(new Uint8Array(0), true)).then(() => queue.end()),
            (err: Error) => queue.end(err),
          );
        yield* queue;
      } finally {
        release();
      }
    },

    async writeFile(requests) {
      const it = requests[Symbol.asyncIterator]();
      const first = await it.next();
      const open = first.done ? undefined : (first.value as WriteFileRequest).msg;
      if (open?.case !== "open") {
        throw invalid("WriteFile must start with {open:{path, mode}}", "Send the open message first, then data.");
      }
      const id = sandboxId(writeCtx(requests));
      const path = guestPath(open.value.path, "path");
      async function* data(): AsyncIterable<Buffer> {
        for (;;) {
          const n = await it.next();
          if (n.done) return;
          const m = (n.value as WriteFileRequest).msg;
          if (m.case === "data") yield Buffer.from(m.value);
          else throw invalid("WriteFile got a second open message", "Send one open, then only data messages.");
        }
      }
      const release = engine.openStream(id);
      try {
        const bytes = await engine.agent(id).writeFile(path, data(), { mode: open.value.mode || 0o644 });
        return { bytesWritten: BigInt(bytes) };
      } finally {
        release();
      }
    },

    async list(req, ctx) {
      const parent = guestPath(req.parent, "parent");
      // Checked before the guest is asked, so a bad filter costs nothing.
      const page = listPage(req);
      const entries = await engine.agent(sandboxId(ctx)).list(parent);
      const r = page(entries.map(fileInfo));
      return { entries: r.entries, nextPageToken: r.nextPageToken };
    },

    async stat(req, ctx) {
      return fileInfo(await engine.agent(sandboxId(ctx)).stat(guestPath(req.path, "path")));
    },

    async mkdir(req, ctx) {
      await engine.agent(sandboxId(ctx)).mkdir(guestPath(req.path, "path"));
      return {};
    },

    async remove(req, ctx) {
      const path = guestPath(req.path, "path");
      if (path.replace(/\/+$/, "") === "") {
        throw invalid("refusing to remove /", "Name the file or directory to remove, e.g. /workspace/out.");
      }
      // Upstream clients send only {path}: recursive unless asked otherwise, a missing path is done already.
      try {
        await engine.agent(sandboxId(ctx)).remove(path, req.recursive ?? true);
      } catch (err) {
        if (!(err instanceof MitosError && err.code === "not_found") || req.strict) throw err;
      }
      return {};
    },

    async processes(_req, ctx) {
      const procs = await engine.agent(sandboxId(ctx)).processes();
      return {
        processes: procs.map((p) => ({
          pid: p.pid,
          ppid: p.ppid,
          command: p.command,
          state: p.state,
          cpuPercent: p.cpuPercent,
          rssBytes: BigInt(p.rssBytes),
        })),
      };
    },

    async signal(req, ctx) {
      if (req.pid <= 1) throw invalid(`cannot signal pid ${req.pid}`, "Name a process from Processes (pid > 1).");
      await engine.agent(sandboxId(ctx)).kill(req.pid, req.signal || 15);
      return {};
    },
  };
}

// The client-streaming handler gets its context through the wrapper below.
const ctxOf = new WeakMap<object, HandlerContext>();
function writeCtx(requests: object): HandlerContext {
  const ctx = ctxOf.get(requests);
  if (!ctx) throw new Error("missing handler context");
  return ctx;
}

/** Maps every thrown error to a Connect error carrying the API code. */
/** Every method: a sandbox hibernated while idle is woken first; errors become Connect errors. */
function wrap(impl: ServedImpl, engine: Engine): ServedImpl {
  const out: Record<string, unknown> = {};
  const awake = (ctx: HandlerContext) => engine.awake(ctx.requestHeader.get("x-sandbox-id") ?? "");
  for (const [name, fn] of Object.entries(impl) as Array<[string, (...a: unknown[]) => unknown]>) {
    if (name === "writeFile") {
      out[name] = async (reqs: object, ctx: HandlerContext) => {
        ctxOf.set(reqs, ctx);
        try {
          await awake(ctx);
          return await fn(reqs, ctx);
        } catch (e) {
          throw toConnectError(e);
        }
      };
    } else if (fn.constructor.name === "AsyncGeneratorFunction") {
      out[name] = async function* (req: unknown, ctx: HandlerContext) {
        try {
          await awake(ctx);
          yield* fn(req, ctx) as AsyncIterable<unknown>;
        } catch (e) {
          throw toConnectError(e);
        }
      };
    } else {
      out[name] = async (req: unknown, ctx: HandlerContext) => {
        try {
          await awake(ctx);
          return await fn(req, ctx);
        } catch (e) {
          throw toConnectError(e);
        }
      };
    }
  }
  return out as ServedImpl;
}

export interface ExecFields {
  command: string;
  args: string[];
  env: Array<{ key: string; value: string }>;
  cwd: string;
  timeoutSeconds: number;
}

/** Validates an exec request from the wire (ExecStream, or the Exec socket's open message). */
export function toExecRequest(r: ExecFields, maxExecTimeoutSeconds: number, pty = false): ExecRequest {
  if (r.timeoutSeconds < 0) {
    throw invalid(`timeoutSeconds ${r.timeoutSeconds} is negative`, "Pass 0 for the default, or a positive number.");
  }
  if (r.timeoutSeconds > maxExecTimeoutSeconds) {
    throw new MitosError("timeout_too_large", `timeoutSeconds ${r.timeoutSeconds} is above ${maxExecTimeoutSeconds}`, {
      remediation: `Ask for at most ${maxExecTimeoutSeconds} seconds; long jobs can run in the background.`,
    });
  }
  if (r.command === "" && r.args.length === 0 && !pty) {
    throw invalid(
      "exec needs a command or args",
      "Pass command (run by /bin/sh -c) or args (argv); a PTY may omit both.",
    );
  }
  const strings = [r.command, ...r.args, ...r.env.flatMap((e) => [e.key, e.value])];
  if (strings.some((x) => x.includes("\0"))) {
    throw invalid("command, args and env cannot contain NUL bytes", "Remove the NUL (\\0) characters.");
  }
  const env: Record<string, string> = {};
  for (const e of r.env) env[e.key] = e.value;
  return {
    ...(r.args.length > 0 ? { args: r.args } : r.command !== "" ? { command: r.command } : {}),
    env,
    ...(r.cwd ? { cwd: guestPath(r.cwd, "cwd") } : {}),
    ...(r.timeoutSeconds > 0 ? { timeoutMs: r.timeoutSeconds * 1000 } : {}),
  };
}

/** The X-Sandbox-Id header (or the WebSocket's ?sandbox=), checked against the API's id pattern. */
export function checkSandboxId(id: string | null | undefined): string {
  if (!id) throw invalid("missing X-Sandbox-Id header", "Name the target sandbox in the X-Sandbox-Id header.");
  if (!ID_RE.test(id)) {
    throw invalid(
      `invalid sandbox id ${JSON.stringify(id.slice(0, 80))}`,
      "Ids match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$.",
      {
        sandbox: id.slice(0, 80),
      },
    );
  }
  return id;
}

/**
 * Guest paths must be absolute; they never name anything on the host: every
 * file operation is a request to the guest agent, which resolves the path
 * inside the VM.
 */
export function guestPath(p: string, field: string): string {
  if (!p.startsWith("/") || p.includes("\0") || p.length > 4096) {
    throw invalid(
      `${field} must be an absolute guest path`,
      "Use an absolute path inside the sandbox, e.g. /root/file.txt.",
      {
        [field]: p.slice(0, 200),
      },
    );
  }
  return p;
}

function fileInfo(f: EngineFileInfo): FileInfo {
  return create(FileInfoSchema, {
    name: f.name,
    path: f.path,
    isDir: f.type === "dir",
    size: BigInt(f.size),
    mode: f.mode,
    modifiedAtUnix: BigInt(f.mtime),
  });
}

function execEvent(event: ExecResponse["event"]): ExecResponse {
  return { $typeName: "sandbox.v1.ExecResponse", event };
}

function readEvent(data: Uint8Array, eof: boolean): Chunk {
  return { $typeName: "sandbox.v1.Chunk", data, eof };
}

function sizeOfExec(m: ExecResponse): number {
  return m.event.case === "stdout" || m.event.case === "stderr" ? m.event.value.length : 1;
}
