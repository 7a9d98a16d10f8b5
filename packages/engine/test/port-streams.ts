// What the port-forward tests do with a stream: write with backpressure and
// read back everything until the other end's EOF.

import type { PortStream } from "../src/agent/port-stream.js";

/** Writes `data` in `chunk`-byte pieces honouring backpressure, ends, and collects everything until EOF. */
export async function roundTrip(stream: PortStream, data: Buffer, chunk = 128 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const got = new Promise<Buffer>((resolve, reject) => {
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => resolve(Buffer.concat(chunks)));
    stream.on("error", reject);
  });
  for (let off = 0; off < data.length; off += chunk) {
    if (!stream.write(data.subarray(off, off + chunk))) await new Promise((r) => stream.once("drain", r));
  }
  stream.end();
  return got;
}
