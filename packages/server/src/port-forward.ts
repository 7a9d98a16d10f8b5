// The runtime's PortForward (bidi; UPSTREAM-WIRE.md): the first frame opens
// a guest port, then data frames flow both ways over the agent's
// port-forward stream; `close` (either way) ends it. Backpressure both ways:
// the guest stream pauses while the response queue is full, and input waits
// for the guest stream to drain.

import { once } from "node:events";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Engine } from "@mitos/engine";
import { type Frame, FrameSchema } from "@mitos/proto";
import { toConnectError } from "./errors.js";
import { StreamQueue } from "./stream-queue.js";

const QUEUE_BYTES = 1 << 20;

const dataFrame = (value: Uint8Array) => create(FrameSchema, { msg: { case: "data", value } });

export async function* forwardPort(
  engine: Engine,
  id: string,
  inputs: AsyncIterable<Frame>,
  signal: AbortSignal,
): AsyncGenerator<Frame> {
  const it = inputs[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done || first.value.msg.case !== "open") {
    throw new ConnectError("the first PortForward frame must be open{port}", Code.InvalidArgument);
  }
  const port = first.value.msg.value.port;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ConnectError(`port ${port} is out of range (1-65535)`, Code.InvalidArgument);
  }
  const release = engine.openStream(id);
  try {
    let stream: Awaited<ReturnType<ReturnType<Engine["agent"]>["openPort"]>>;
    try {
      stream = await engine.agent(id).openPort(port, { allowHalfOpen: true });
    } catch (err) {
      throw toConnectError(err);
    }
    const queue = new StreamQueue<Frame>(QUEUE_BYTES, (f) => (f.msg.case === "data" ? f.msg.value.length : 16));
    stream.on("data", (chunk: Buffer) => {
      stream.pause();
      void queue.push(dataFrame(chunk)).then(() => stream.resume());
    });
    stream.on("end", () => {
      void queue.push(create(FrameSchema, { msg: { case: "close", value: true } })).then(() => queue.end());
    });
    stream.on("error", (err) => queue.end(toConnectError(err)));
    const onAbort = () => {
      stream.destroy();
      queue.end();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    // The caller's frames, into the guest.
    void (async () => {
      for (let next = await it.next(); !next.done; next = await it.next()) {
        const m = next.value.msg;
        if (m.case === "data" && !stream.write(m.value)) await once(stream, "drain");
        else if (m.case === "close") break;
      }
      stream.end();
    })().catch((err: Error) => stream.destroy(err));
    try {
      yield* queue;
    } finally {
      signal.removeEventListener("abort", onAbort);
      stream.destroy();
    }
  } finally {
    release();
  }
}
