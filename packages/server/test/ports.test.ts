// Guest ports through mitosd, without a NIC (docs/ports.md): HTTP by path
// and by Host, auth by the API token or a port token, a WebSocket echo, and
// after a fork every child serving its own files from the server the parent
// started (listening sockets survive a fork).

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { FrameSchema } from "@mitos/proto";
import { type Sandbox, SandboxServer } from "@mitos/sdk";
import WebSocket from "ws";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";
import { runtimeClient } from "../../../test-support/runtime-client.js";
import { until } from "../../../test-support/until.js";

const dataDir = tempDataDir("test-ports");
let daemon: Daemon;
let server: SandboxServer;
let sb: Sandbox;

// A WebSocket echo server from Python's standard library (the guest has no
// websockets package): handshake, then each masked client frame comes back
// unmasked. Small frames only, as the test sends.
const WS_ECHO = `
import base64, hashlib, socket, threading
def serve(c):
    req = b""
    while b"\\r\\n\\r\\n" not in req: req += c.recv(4096)
    key = [l.split(b":",1)[1].strip() for l in req.split(b"\\r\\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + acc + b"\\r\\n\\r\\n")
    while True:
        h = c.recv(2)
        if len(h) < 2: return
        n = h[1] & 127
        mask = c.recv(4)
        data = bytearray(c.recv(n))
        for i in range(n): data[i] ^= mask[i % 4]
        if h[0] & 15 == 8: return
        c.sendall(bytes([h[0], n]) + bytes(data))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8765)); s.listen()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

// Answers with its head at once and its body only once /srv/go exists: a
// proxy that held the head back until the body would never let fetch resolve.
const HEAD_FIRST = `
import os, socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8766)); s.listen()
while True:
    c, _ = s.accept(); c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nConnection: close\\r\\n\\r\\n")
    while not os.path.exists("/srv/go"): time.sleep(0.05)
    c.sendall(b"body after the head"); c.close()
`;

before(async () => {
  daemon = await startMitosd(dataDir);
  server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
  sb = await server.fork("python");
  await sb.exec("mkdir -p /srv && echo parent > /srv/who.txt");
  await sb.exec("cd /srv && nohup python3 -m http.server 8000 >/dev/null 2>&1 &");
  await sb.files.write("/srv/ws.py", WS_ECHO);
  await sb.exec("nohup python3 /srv/ws.py >/dev/null 2>&1 &");
  await sb.files.write("/srv/head-first.py", HEAD_FIRST);
  await sb.exec("nohup python3 /srv/head-first.py >/dev/null 2>&1 &");
  await until(
    "the guest's servers",
    async () => (await sb.exec("curl -sf http://127.0.0.1:8000/who.txt")).exitCode === 0,
  );
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

const auth = () => ({ authorization: `Bearer ${daemon.token}` });

/** GET from mitosd's address with another Host (fetch may not set Host). */
function getWithHost(
  path: string,
  host: string,
  headers: Record<string, string>,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(daemon.url);
    const req = http.get({ host: u.hostname, port: u.port, path, headers: { ...headers, host } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("error", reject);
  });
}

describe("guest ports through mitosd", () => {
  it("by path and by Host, with the API token; refused without it", async () => {
    const byPath = await fetch(`${daemon.url}/v1/sandboxes/${sb.id}/ports/8000/who.txt`, { headers: auth() });
    assert.equal(byPath.status, 200);
    assert.equal(await byPath.text(), "parent\n");
    const host = sb.getHost(8000);
    assert.equal(host, `8000-${sb.id}.localhost:${new URL(daemon.url).port}`);
    // Host routing: the request goes to mitosd's address with the sandbox's Host (curl and browsers map *.localhost here).
    const byHost = await getWithHost("/who.txt", host, auth());
    assert.equal(byHost.status, 200);
    assert.equal(byHost.text, "parent\n");
    const anon = await fetch(`${daemon.url}/v1/sandboxes/${sb.id}/ports/8000/who.txt`);
    assert.equal(anon.status, 401);
    assert.equal(((await anon.json()) as { error: { code: string } }).error.code, "unauthorized");
  });

  it("a port token opens that port only", async () => {
    const exposed = await sb.expose(8000);
    assert.match(exposed.url, new RegExp(`/v1/sandboxes/${sb.id}/ports/8000/$`));
    const ok = await fetch(`${exposed.url}who.txt`, { headers: { [exposed.tokenHeader]: exposed.token } });
    assert.equal(ok.status, 200);
    const otherPort = await fetch(`${daemon.url}/v1/sandboxes/${sb.id}/ports/8765/`, {
      headers: { [exposed.tokenHeader]: exposed.token },
    });
    assert.equal(otherPort.status, 401);
    const wrong = await fetch(`${exposed.url}who.txt`, { headers: { [exposed.tokenHeader]: `${exposed.token}x` } });
    assert.equal(wrong.status, 401);
  });

  it("a port nothing listens on is 502 with a remediation; an unknown sandbox 404", async () => {
    const r = await fetch(`${daemon.url}/v1/sandboxes/${sb.id}/ports/9/`, { headers: auth() });
    assert.equal(r.status, 502);
    const body = (await r.json()) as { error: { code: string; remediation: string } };
    assert.equal(body.error.code, "unavailable");
    assert.ok(body.error.remediation.length > 0);
    const gone = await fetch(`${daemon.url}/v1/sandboxes/sb-nope/ports/8000/`, { headers: auth() });
    assert.equal(gone.status, 404);
  });

  it("a guest's response head reaches the client before its body (streamed answers are not held back)", async () => {
    let res: Response | undefined;
    await until("the head-first server", async () => {
      res = await fetch(`${daemon.url}/v1/sandboxes/${sb.id}/ports/8766/`, {
        headers: auth(),
        signal: AbortSignal.timeout(30_000),
      });
      return res.status !== 502; // not listening yet
    });
    assert.equal(res?.status, 200);
    // Only now does the guest write its body.
    await sb.exec("touch /srv/go");
    assert.equal(await res?.text(), "body after the head");
  });

  it("a WebSocket echo server in the guest works through the proxy", async () => {
    const ws = new WebSocket(`${daemon.url.replace("http", "ws")}/v1/sandboxes/${sb.id}/ports/8765/`, {
      headers: auth(),
    });
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    const echoed: string[] = [];
    for (const m of ["hello", "from", "the host"]) {
      ws.send(m);
      echoed.push(String(await new Promise((r) => ws.once("message", r))));
    }
    ws.close();
    assert.deepEqual(echoed, ["hello", "from", "the host"]);
  });

  it("the runtime's PortForward (bidi over h2c) carries an HTTP exchange; a closed port is an error", async () => {
    const client = runtimeClient(daemon, sb.id, { httpVersion: "2" });
    async function* frames() {
      yield create(FrameSchema, { msg: { case: "open", value: { port: 8000 } } });
      yield create(FrameSchema, {
        msg: { case: "data", value: Buffer.from("GET /who.txt HTTP/1.0\r\nHost: x\r\n\r\n") },
      });
    }
    let answer = "";
    let closed = false;
    for await (const f of client.portForward(frames())) {
      if (f.msg.case === "data") answer += Buffer.from(f.msg.value).toString();
      if (f.msg.case === "close") closed = true;
    }
    assert.match(answer, /^HTTP\/1\.0 200/);
    assert.match(answer, /\r\n\r\nparent\n$/);
    assert.ok(closed, "the guest's EOF arrives as a close frame");
    async function* toClosed() {
      yield create(FrameSchema, { msg: { case: "open", value: { port: 9 } } });
    }
    await assert.rejects(async () => {
      for await (const _ of client.portForward(toClosed())) {
        // nothing arrives
      }
    }, /unavailable|refused/i);
  });

  it("after fork(3) each child serves its own file from the server the parent started", async () => {
    const children = await sb.fork(3);
    try {
      for (const [i, c] of children.entries()) await c.exec(`echo child-${i} > /srv/who.txt`);
      for (const [i, c] of children.entries()) {
        const r = await fetch(`${daemon.url}/v1/sandboxes/${c.id}/ports/8000/who.txt`, { headers: auth() });
        assert.equal(r.status, 200);
        assert.equal(await r.text(), `child-${i}\n`);
        const h = await getWithHost("/who.txt", c.getHost(8000), auth());
        assert.equal(h.text, `child-${i}\n`);
      }
      const parent = await fetch(`${daemon.url}/v1/sandboxes/${sb.id}/ports/8000/who.txt`, { headers: auth() });
      assert.equal(await parent.text(), "parent\n");
    } finally {
      for (const c of children) await c.terminate();
    }
  });
});
