// Port forwarding on a real microVM: the host opens TCP connections to
// servers inside a python sandbox (which has only a loopback) through the
// sandbox's agent channel: an HTTP GET to `python3 -m http.server`, a refused
// port, 20 concurrent 1 MiB echoes, closing from the host, and a fork (the
// child must not inherit the parent's forwards).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { until } from "../../../test-support/until.js";
import type { PortStream } from "../src/agent/port-stream.js";
import { defaultDataDir } from "../src/config.js";
import { Engine, type MitosError } from "../src/index.js";

const imagesDir = path.join(defaultDataDir(), "images");
const dataDir = tempDataDir("test-port-forward");
let engine: Engine;
let sb: string;

const HTTP_PORT = 8000;
const ECHO_PORT = 9000;

/** Echoes each connection until EOF, then half-closes: one thread a connection. */
const ECHO_PY = `
import socket, sys, threading
def serve(c):
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
s = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=128)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

import { roundTrip } from "./port-streams.js";

/** Open TCP connections (ESTABLISHED or CLOSE_WAIT) with ECHO_PORT at either end, listeners excluded. */
const COUNT_PY = `
n = 0
for f in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = open(f).read().splitlines()[1:]
    except OSError:
        continue
    for r in rows:
        p = r.split()
        ports = {int(p[1].rsplit(":", 1)[1], 16), int(p[2].rsplit(":", 1)[1], 16)}
        if p[3] in ("01", "08") and ${ECHO_PORT} in ports:
            n += 1
print(n)
`;

const sh = async (id: string, command: string) => {
  const r = await engine.exec(id, { command }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};

const echoConnections = async (id: string) => Number(await sh(id, "python3 /tmp/count.py"));

/** Reads from a stream until `n` bytes have come. */
function readBytes(stream: PortStream, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let len = 0;
    const onData = (c: Buffer) => {
      chunks.push(c);
      len += c.length;
      if (len >= n) {
        stream.off("data", onData);
        stream.pause();
        resolve(Buffer.concat(chunks));
      }
    };
    stream.on("data", onData);
    stream.once("error", reject);
    stream.resume();
  });
}

/** Opens a forward once something listens on `port` (the server was just started). */
const openWhenListening = (id: string, port: number) =>
  until(`port ${port} to listen in ${id}`, async () => {
    try {
      return await engine.agent(id).openPort(port);
    } catch (err) {
      if ((err as MitosError).code === "unavailable" && (err as MitosError).context.errno === 111) return undefined;
      throw err;
    }
  });

before(
  async () => {
    engine = await Engine.open({ dataDir, imagesDir, poolTargets: { python: 0 } });
    await engine.createTemplate("python");
    sb = (await engine.create("python")).id;
    const agent = engine.agent(sb);
    await agent.writeFile("/tmp/echo.py", ECHO_PY);
    await agent.writeFile("/tmp/count.py", COUNT_PY);
    await sh(sb, `cd /tmp && nohup python3 -m http.server ${HTTP_PORT} >/tmp/http.log 2>&1 &`);
    await sh(sb, `nohup python3 /tmp/echo.py ${ECHO_PORT} >/tmp/echo.log 2>&1 &`);
  },
  { timeout: 600_000 },
);

after(async () => {
  await engine?.close({ killSandboxes: true });
  removeDataDir(dataDir);
});

describe("port forwarding into a VM", { timeout: 600_000 }, () => {
  it("GETs a page from python3 -m http.server in the guest", async () => {
    const s = await openWhenListening(sb, HTTP_PORT);
    s.write(`GET / HTTP/1.0\r\nHost: localhost:${HTTP_PORT}\r\n\r\n`);
    const chunks: Buffer[] = [];
    for await (const c of s) chunks.push(c as Buffer);
    const answer = Buffer.concat(chunks).toString();
    assert.match(answer, /^HTTP\/1\.[01] 200 /);
    assert.match(answer, /Directory listing for \//);
    assert.match(answer, /echo\.py/);
  });

  it("answers a port nothing listens on with connection refused, fast", async () => {
    const t0 = Date.now();
    await assert.rejects(engine.agent(sb).openPort(8001), (e: MitosError) => {
      assert.equal(e.code, "unavailable");
      assert.equal(e.context.errno, 111);
      assert.match(e.message, /connection refused: nothing listens on 127\.0\.0\.1:8001 or \[::1\]:8001/);
      return true;
    });
    const ms = Date.now() - t0;
    assert.ok(ms < 2000, `refusal took ${ms} ms`);
  });

  it("carries 20 concurrent forwards of 1 MiB each way, byte-identical", async () => {
    (await openWhenListening(sb, ECHO_PORT)).destroy();
    const agent = engine.agent(sb);
    const ok = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const data = randomBytes(1024 * 1024);
        return (await roundTrip(await agent.openPort(ECHO_PORT), data)).equals(data);
      }),
    );
    assert.deepEqual(ok, Array(20).fill(true));
  });

  it("closing from the host frees the guest's socket", async () => {
    await until("no echo connections left", async () => (await echoConnections(sb)) === 0, 20_000);
    const s = await engine.agent(sb).openPort(ECHO_PORT);
    s.write("ping");
    assert.equal((await readBytes(s, 4)).toString(), "ping");
    assert.equal(await echoConnections(sb), 2, "the agent's end and the server's");
    s.destroy();
    await until("the guest sockets to close", async () => (await echoConnections(sb)) === 0, 20_000);
  });

  it("a fork's child does not inherit the parent's forwards; the parent's carry on", async () => {
    const agent = engine.agent(sb);
    const s = await agent.openPort(ECHO_PORT);
    s.write("before");
    assert.equal((await readBytes(s, 6)).toString(), "before");
    const { children } = await engine.fork(sb, { count: 1 });
    const child = children[0]!.id;
    try {
      // In the child the agent closed its copy of the socket; the echo server's copy saw EOF.
      await until("the child's inherited forward to close", async () => (await echoConnections(child)) === 0, 20_000);
      const c = await engine.agent(child).openPort(ECHO_PORT);
      assert.equal((await roundTrip(c, Buffer.from("child"))).toString(), "child");
      // The parent's forward was not touched.
      s.write("after");
      assert.equal((await readBytes(s, 5)).toString(), "after");
      assert.equal(await echoConnections(sb), 2);
    } finally {
      s.destroy();
      await engine.terminate(child);
    }
  });
});
