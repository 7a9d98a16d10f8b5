// Interactive exec: the first input opens the command (optionally on a PTY),
// later inputs are stdin, resize and stdinClose (true); outputs are stdout/stderr
// chunks and the exit status. Shared by the Connect bidi `Exec` (h2c) and
// the WebSocket route for HTTP/1.1 clients.

import type { Engine } from "@mitos/engine";
import { MitosError } from "@mitos/engine";
import type { ExecRequest, ExecResponse } from "@mitos/proto";
import { checkSandboxId, toExecRequest } from "./runtime.js";
import { StreamQueue } from "./stream-queue.js";

const QUEUE_BYTES = 1 << 20;

export async function* interactiveExec(
  engine: Engine,
  sandboxId: string,
  inputs: AsyncIterable<ExecRequest>,
  maxExecTimeoutSeconds: number,
  signal: AbortSignal,
): AsyncGenerator<ExecResponse> {
  checkSandboxId(sandboxId);
  // The terminal WebSocket comes here directly: a sandbox hibernated while idle wakes first.
  await engine.awake(sandboxId);
  const it = inputs[Symbol.asyncIterator]();
  const first = await it.next();
  const open = first.done ? undefined : first.value.input;
  if (open?.case !== "open") {
    throw new MitosError("invalid_input", "the first message must be {open:{…}}", {
      remediation: "Send {open:{command, pty?}} first, then stdin/resize/stdinClose messages.",
    });
  }
  const o = open.value;
  const pty = o.pty ? { cols: o.pty.size?.cols || 80, rows: o.pty.size?.rows || 24 } : undefined;
  const queue = new StreamQueue<ExecResponse>(QUEUE_BYTES, (m) =>
    m.event.case === "stdout" || m.event.case === "stderr" ? m.event.value.length : 1,
  );
  const out = (event: ExecResponse["event"]) => queue.push({ $typeName: "sandbox.v1.ExecResponse", event });
  const request = toExecRequest(o, maxExecTimeoutSeconds, pty !== undefined);
  const release = engine.openStream(sandboxId);
  let handle: ReturnType<Engine["exec"]>;
  try {
    handle = engine.exec(sandboxId, {
      ...request,
      ...(pty ? { pty } : {}),
      stdin: true,
      collect: false,
      onStdout: (c) => out({ case: "stdout", value: c }),
      onStderr: (c) => out({ case: "stderr", value: c }),
    });
  } catch (err) {
    release();
    throw err;
  }
  let exited = false;
  // The caller went away: everything the command started goes too.
  const onAbort = () => {
    if (!exited) handle.signal(9);
    queue.end();
  };
  signal.addEventListener("abort", onAbort, { once: true });
  void (async () => {
    for (;;) {
      const n = await it.next();
      if (n.done) return;
      const m = n.value.input;
      if (m.case === "stdin") await handle.write(Buffer.from(m.value));
      else if (m.case === "resize") handle.resize(m.value.cols, m.value.rows);
      else if (m.case === "stdinClose" && m.value) handle.closeStdin();
      else if (m.case === "open") {
        throw new MitosError("invalid_input", "open was sent twice", { remediation: "Send open once per call." });
      }
    }
  })().catch((err: unknown) => {
    if (exited) return;
    handle.signal(9);
    queue.end(err instanceof Error ? err : new Error(String(err)));
  });
  handle.result.then(
    async (r) => {
      exited = true;
      await out({
        case: "exit",
        value: { $typeName: "sandbox.v1.ExecExit", exitCode: r.exitCode, execTimeMs: r.durationMs, error: "" },
      });
      queue.end();
    },
    (err: Error) => queue.end(err),
  );
  try {
    yield* queue;
  } finally {
    signal.removeEventListener("abort", onAbort);
    if (!exited) handle.signal(9);
    release();
  }
}
