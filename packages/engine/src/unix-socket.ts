// Connecting to a Unix socket that a just-started QEMU will create soon.

import net from "node:net";

/** Connects to `path`, retrying every `retryMs` until it accepts or `deadlineMs` passes (then rethrows). */
export async function connectWhenReady(path: string, deadlineMs: number, retryMs = 10): Promise<net.Socket> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(path);
        s.once("connect", () => {
          s.removeListener("error", reject);
          resolve(s);
        });
        s.once("error", reject);
      });
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, retryMs));
    }
  }
}
