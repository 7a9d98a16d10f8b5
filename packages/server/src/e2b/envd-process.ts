// envd's process.Process service (E2B-COMPAT.md §5, §7) on the agent's exec.
// A process started here outlives the stream that started it, as in envd: a
// client that goes away leaves it running, Connect re-attaches to its output,
// List shows it until it exits. Only a passed Connect-Timeout-Ms kills it.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import type { ExecHandle, ExecResult } from "@mitos/engine";
import { envdProcess as pb } from "@mitos/proto/envd";
import { StreamQueue } from "../stream-queue.js";
import { callSandbox, callUser, type EnvdDeps, envdError, unary } from "./envd-context.js";
import { resolvePath } from "./users.js";

const QUEUE_BYTES = 1 << 20;
const SIGNAL_NAMES: Record<number, string> = { 1: "hangup", 2: "interrupt", 9: "killed", 15: "terminated" };

type Event = pb.ProcessEvent["event"];

interface Subscriber {
  queue: StreamQueue<Event>;
}

interface Proc {
  pid: number;
  tag: string | undefined;
  config: pb.ProcessConfig;
  pty: boolean;
  handle: ExecHandle;
  subscribers: Set<Subscriber>;
}

/** The processes started through envd, per sandbox, until they exit. */
class ProcessTable {
  private readonly bySandbox = new Map<string, Map<number, Proc>>();

  add(sandbox: string, p: Proc): void {
    let m = this.bySandbox.get(sandbox);
    if (!m) {
      m = new Map();
      this.bySandbox.set(sandbox, m);
    }
    m.set(p.pid, p);
  }

  remove(sandbox: string, pid: number): void {
    const m = this.bySandbox.get(sandbox);
    m?.delete(pid);
    if (m?.size === 0) this.bySandbox.delete(sandbox);
  }

  list(sandbox: string): Proc[] {
    return [...(this.bySandbox.get(sandbox)?.values() ?? [])];
  }

  find(sandbox: string, sel: pb.ProcessSelector | undefined): Proc {
    const s = sel?.selector;
    const p =
      s?.case === "pid"
        ? this.bySandbox.get(sandbox)?.get(s.value)
        : s?.case === "tag"
          ? this.list(sandbox).find((x) => x.tag === s.value)
          : undefined;
    if (!p) {
      const what = s?.case === "tag" ? `tag ${s.value}` : `pid ${s?.value ?? "(none)"}`;
      throw new ConnectError(`process with ${what} not found`, Code.NotFound);
    }
    return p;
  }
}

export function registerProcess(router: ConnectRouter, deps: EnvdDeps): void {
  const table = new ProcessTable();
  router.service(pb.Process, {
    list: unary(async (_req: pb.ListRequest, ctx: HandlerContext) => {
      const id = callSandbox(ctx);
      return create(pb.ListResponseSchema, {
        processes: table.list(id).map((p) => ({ pid: p.pid, config: p.config, ...(p.tag ? { tag: p.tag } : {}) })),
      });
    }),

    async *start(req, ctx) {
      const id = callSandbox(ctx);
      let proc: Proc;
      let sub: Subscriber;
      try {
        const user = await callUser(deps, id, ctx);
        const cfg = req.process;
        if (!cfg?.cmd) throw new ConnectError("process.cmd is required", Code.InvalidArgument);
        const cwd = resolvePath(cfg.cwd ?? user.home, user);
        const pty = req.pty?.size ? { cols: req.pty.size.cols || 80, rows: req.pty.size.rows || 24 } : undefined;
        sub = subscriber();
        const subscribers = new Set<Subscriber>([sub]);
        const broadcast = (ev: Event) => Promise.all([...subscribers].map((s) => s.queue.push(ev))).then(() => {});
        const handle = deps.engine.exec(id, {
          args: [cfg.cmd, ...cfg.args],
          env: { ...cfg.envs },
          cwd,
          uid: user.uid,
          gid: user.gid,
          // envd before 0.3.0 always opened stdin; the field is absent from such clients.
          stdin: pty ? true : (req.stdin ?? true),
          ...(pty ? { pty } : {}),
          collect: false,
          onStdout: (c) => broadcast(dataEvent(pty ? "pty" : "stdout", c)),
          onStderr: (c) => broadcast(dataEvent("stderr", c)),
        });
        const pid = await handle.started;
        proc = { pid, tag: req.tag, config: cfg, pty: pty !== undefined, handle, subscribers };
        table.add(id, proc);
        // The process lives under the Start call's deadline, whether or not its client is still there.
        const limitMs = Number(ctx.requestHeader.get("connect-timeout-ms") ?? "");
        const limit = limitMs > 0 ? setTimeout(() => handle.signal(9), limitMs) : undefined;
        handle.result.finally(() => clearTimeout(limit)).catch(() => {});
        handle.result.then(
          (r) => finish(proc, endEvent(r)),
          (err: Error) =>
            finish(proc, {
              case: "end",
              value: { exitCode: -1, exited: false, status: "error", error: err.message },
            } as Event),
        );
        await sub.queue.push({ case: "start", value: create(pb.ProcessEvent_StartEventSchema, { pid }) });
      } catch (err) {
        throw envdError(err);
      }
      function finish(p: Proc, ev: Event): void {
        table.remove(id, p.pid);
        for (const s of p.subscribers) void s.queue.push(ev).then(() => s.queue.end());
      }
      yield* follow(proc, sub, ctx);
    },

    async *connect(req, ctx) {
      const id = callSandbox(ctx);
      let proc: Proc;
      try {
        proc = table.find(id, req.process);
      } catch (err) {
        throw envdError(err);
      }
      const sub = subscriber();
      proc.subscribers.add(sub);
      await sub.queue.push({ case: "start", value: create(pb.ProcessEvent_StartEventSchema, { pid: proc.pid }) });
      yield* follow(proc, sub, ctx);
    },

    update: unary(async (req: pb.UpdateRequest, ctx: HandlerContext) => {
      const p = table.find(callSandbox(ctx), req.process);
      const size = req.pty?.size;
      if (size) {
        if (!p.pty) throw new ConnectError(`process ${p.pid} has no PTY`, Code.InvalidArgument);
        p.handle.resize(size.cols, size.rows);
      }
      return create(pb.UpdateResponseSchema);
    }),

    streamInput: unary(async (inputs: AsyncIterable<pb.StreamInputRequest>, ctx: HandlerContext) => {
      const id = callSandbox(ctx);
      let p: Proc | undefined;
      for await (const m of inputs) {
        if (m.event.case === "start") p = table.find(id, m.event.value.process);
        else if (m.event.case === "data") {
          if (!p) throw new ConnectError("StreamInput must start with start{process}", Code.InvalidArgument);
          await writeInput(p, m.event.value.input);
        }
      }
      return create(pb.StreamInputResponseSchema);
    }),

    sendInput: unary(async (req: pb.SendInputRequest, ctx: HandlerContext) => {
      await writeInput(table.find(callSandbox(ctx), req.process), req.input);
      return create(pb.SendInputResponseSchema);
    }),

    sendSignal: unary(async (req: pb.SendSignalRequest, ctx: HandlerContext) => {
      const p = table.find(callSandbox(ctx), req.process);
      if (req.signal !== pb.Signal.SIGKILL && req.signal !== pb.Signal.SIGTERM) {
        throw new ConnectError(`signal ${req.signal} is not supported (SIGKILL or SIGTERM)`, Code.InvalidArgument);
      }
      p.handle.signal(req.signal);
      return create(pb.SendSignalResponseSchema);
    }),

    closeStdin: unary(async (req: pb.CloseStdinRequest, ctx: HandlerContext) => {
      table.find(callSandbox(ctx), req.process).handle.closeStdin();
      return create(pb.CloseStdinResponseSchema);
    }),
  });
}

function subscriber(): Subscriber {
  return { queue: new StreamQueue<Event>(QUEUE_BYTES, (e) => (e.case === "data" ? dataSize(e.value) : 1)) };
}

function dataSize(d: pb.ProcessEvent_DataEvent): number {
  return d.output.value?.length ?? 1;
}

/** Streams a subscriber's events with keepalives. The stream ending does not stop the process. */
async function* follow(
  proc: Proc,
  sub: Subscriber,
  ctx: HandlerContext,
): AsyncGenerator<pb.StartResponse & pb.ConnectResponse> {
  const interval = Number(ctx.requestHeader.get("keepalive-ping-interval") ?? "");
  const keepalive =
    interval > 0
      ? setInterval(
          () => void sub.queue.push({ case: "keepalive", value: create(pb.ProcessEvent_KeepAliveSchema) }),
          interval * 1000,
        )
      : undefined;
  const onAbort = () => {
    const reason = ctx.signal.reason;
    sub.queue.end(reason instanceof Error ? reason : undefined);
  };
  ctx.signal.addEventListener("abort", onAbort, { once: true });
  try {
    for await (const ev of sub.queue) {
      yield create(pb.StartResponseSchema, {
        event: create(pb.ProcessEventSchema, { event: ev }),
      }) as pb.StartResponse & pb.ConnectResponse;
    }
  } finally {
    clearInterval(keepalive);
    ctx.signal.removeEventListener("abort", onAbort);
    proc.subscribers.delete(sub);
  }
}

async function writeInput(p: Proc, input: pb.ProcessInput | undefined): Promise<void> {
  const i = input?.input;
  if (!i?.case) throw new ConnectError("input.stdin or input.pty is required", Code.InvalidArgument);
  if (i.case === "pty" && !p.pty) throw new ConnectError(`process ${p.pid} has no PTY`, Code.InvalidArgument);
  await p.handle.write(Buffer.from(i.value));
}

function dataEvent(kind: "stdout" | "stderr" | "pty", chunk: Buffer): Event {
  return {
    case: "data",
    value: create(pb.ProcessEvent_DataEventSchema, { output: { case: kind, value: new Uint8Array(chunk) } }),
  };
}

/** Go's exec semantics, which envd reports: a signalled process has exit code -1 and exited false. */
function endEvent(r: ExecResult): Event {
  const signalled = r.signal !== undefined && r.signal > 0;
  return {
    case: "end",
    value: create(pb.ProcessEvent_EndEventSchema, {
      exitCode: signalled ? -1 : r.exitCode,
      exited: !signalled,
      status: signalled
        ? `signal: ${SIGNAL_NAMES[r.signal as number] ?? `signal ${r.signal}`}`
        : `exit status ${r.exitCode}`,
    }),
  };
}
