// Networked sandboxes end to end (docs/network.md): a real mitosd, real VMs,
// and an "internet" of servers in a namespace the test creates
// (test-support/world.ts). Every refusal is checked against a server that
// does answer, so a test cannot pass because nothing was listening.

import assert from "node:assert/strict";
import net from "node:net";
import os from "node:os";
import { after, before, describe, it } from "node:test";
import { shmDirFor } from "@mitos/engine";
import { type Sandbox, SandboxServer } from "@mitos/sdk";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { assertNoLeaks, networkLeaks, qemuPidsOf, readJournal } from "../../../test-support/leaks.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";
import { until } from "../../../test-support/until.js";
import { startWorld, type World } from "../../../test-support/world.js";

const dataDir = tempDataDir("test-network");
const TEMPLATE = "net";
let world: World;
let daemon: Daemon;
let server: SandboxServer;
/** A TCP service on every host address: guests must never reach it. */
let hostService: net.Server;
let hostPort = 0;

const API = "198.51.100.3";
const SECOND = "198.51.100.4";

before(async () => {
  world = await startWorld({
    extraIps: [API, SECOND],
    http: [
      { host: API, port: 80 },
      { host: API, port: 8080 },
      { host: SECOND, port: 80 },
      { host: SECOND, port: 8080 },
    ],
    udpEcho: [{ host: API, port: 9000 }],
    zone: {
      "api.test.example": [API],
      "other.test.example": [API],
      "second.test.example": [SECOND],
      // DNS rebinding: a public name answering with a private address.
      "rebind.test.example": ["10.9.9.9"],
    },
  });
  hostService = net.createServer((s) => s.end("host service\n"));
  await new Promise<void>((r) => hostService.listen(0, "0.0.0.0", r));
  hostPort = (hostService.address() as net.AddressInfo).port;
  daemon = await startMitosd(dataDir, ["--dns-upstream", world.dnsServer]);
  server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
  await server.createTemplate(TEMPLATE, { image: "base", network: { egress: "deny" } });
});

after(async () => {
  await daemon?.stop();
  hostService?.close();
  world?.close();
  removeDataDir(dataDir);
});

/** Runs a shell command; returns exit code, output and how long it took. */
async function sh(sb: Sandbox, cmd: string): Promise<{ code: number; out: string; ms: number }> {
  const t0 = Date.now();
  const r = await sb.exec(cmd, { timeoutSeconds: 30 });
  return { code: r.exitCode, out: (r.stdout + r.stderr).trim(), ms: Date.now() - t0 };
}

const curl = (url: string) => `curl -sS -m 5 ${url}`;

describe("egress policy", () => {
  it("deny: TCP and UDP to the outside fail fast, and no name resolves", async () => {
    const sb = await server.fork(TEMPLATE);
    try {
      assert.deepEqual(sb.network, { egress: "deny", allowOut: [], denyOut: [] });
      const tcp = await sh(sb, curl(`http://${API}/`));
      assert.equal(tcp.code, 7, tcp.out); // refused at once, not a 5 s timeout
      assert.ok(tcp.ms < 3000, `TCP refusal took ${tcp.ms} ms`);
      const udp = await sh(
        sb,
        `python3 -c "
import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2); s.connect(('${API}',9000))
t=time.time()
try:
    s.send(b'ping'); print(s.recv(100))
except OSError as e:
    print(type(e).__name__, round(time.time()-t,1))
"`,
      );
      // Refused by the kernel (ICMP admin-prohibited: EHOSTUNREACH), not a 2 s silence.
      assert.match(udp.out, /^(ConnectionRefusedError|OSError) [01]\.\d$/, udp.out);
      const dns = await sh(sb, "getent hosts api.test.example");
      assert.notEqual(dns.code, 0, dns.out);
      assert.ok(dns.ms < 3000, `DNS refusal took ${dns.ms} ms`);
    } finally {
      await sb.terminate();
    }
  });

  it("allow list: allowed names resolve and answer; other names, ports and addresses do not", async () => {
    const sb = await server.fork(TEMPLATE, {
      network: { egress: "deny", allowOut: ["api.test.example:80", `${SECOND}/32:80`] },
    });
    try {
      const ok = await sh(sb, curl("http://api.test.example/"));
      assert.equal(ok.code, 0, ok.out);
      assert.match(ok.out, new RegExp(`^${API}:80 api.test.example`));
      // Same server IP, a name not allowed: it does not even resolve.
      const other = await sh(sb, "getent hosts other.test.example");
      assert.notEqual(other.code, 0, other.out);
      // The allowed name on another port.
      assert.equal((await sh(sb, curl("http://api.test.example:8080/"))).code, 7);
      // An allowed CIDR:port works, another port on it does not (a server listens on both).
      assert.equal((await sh(sb, curl(`http://${SECOND}/`))).code, 0);
      assert.equal((await sh(sb, curl(`http://${SECOND}:8080/`))).code, 7);
      // A public name answered with a private address is dropped (rebinding).
      const rebind = await sh(sb, "getent hosts rebind.test.example");
      assert.notEqual(rebind.code, 0, rebind.out);
      // DNS to any other server is refused, the resolver's answer cannot be bypassed.
      const direct = await sh(
        sb,
        `python3 -c "
import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2); s.connect(('${world.dnsServer}',53))
try:
    s.send(b'x'*20); s.recv(100); print('answered')
except OSError as e: print(type(e).__name__)
"`,
      );
      assert.match(direct.out, /^(ConnectionRefusedError|OSError)$/, direct.out);
    } finally {
      await sb.terminate();
    }
  });

  it("always denied, even with egress allow: the host, other sandboxes, link-local", async () => {
    const a = await server.fork(TEMPLATE, { network: { egress: "allow" } });
    const b = await server.fork(TEMPLATE, { network: { egress: "allow" } });
    try {
      // Open egress reaches the outside...
      assert.equal((await sh(a, curl(`http://${API}/`))).code, 0);
      assert.equal((await sh(a, curl("http://other.test.example/"))).code, 0);
      // ...but never this host: its own addresses (mitosd's API among them), its world link, the slots.
      const hostIps = Object.entries(os.networkInterfaces())
        .flatMap(([, addrs]) => addrs ?? [])
        .filter((x) => x.family === "IPv4" && !x.internal)
        .map((x) => x.address);
      assert.ok(hostIps.includes(world.hostIp));
      const apiPort = new URL(daemon.url).port;
      for (const ip of hostIps) {
        for (const port of [hostPort, Number(apiPort)]) {
          const r = await sh(a, curl(`http://${ip}:${port}/`));
          assert.notEqual(r.code, 0, `${ip}:${port} reachable: ${r.out}`);
          assert.ok(r.ms < 3000, `${ip}:${port} took ${r.ms} ms`);
        }
      }
      // The gateway is the namespace, not the host: its services are not reachable either.
      assert.notEqual((await sh(a, curl(`http://169.254.0.22:${hostPort}/`))).code, 0);
      assert.notEqual((await sh(a, curl("http://169.254.169.254/"))).code, 0);
      // The other sandbox: it serves on its own guest address, which is not routable from a,
      // and its slot's addresses are denied.
      await b.exec("nohup python3 -m http.server 8000 >/dev/null 2>&1 &");
      await until("the http server in b", async () => (await sh(b, curl("http://127.0.0.1:8000/"))).code === 0, 30_000);
      const slotIps = hostIps.filter((ip) => ip.startsWith("10.201."));
      assert.ok(slotIps.length >= 2, `slot host ends: ${slotIps}`);
      for (const ip of slotIps) {
        const peer = ip.replace(/\d+$/, (n) => String(Number(n) + 1));
        const r = await sh(a, curl(`http://${peer}:8000/`));
        assert.notEqual(r.code, 0, `${peer}:8000 reachable: ${r.out}`);
      }
    } finally {
      await a.terminate();
      await b.terminate();
    }
  });

  it("a policy change on a running sandbox takes effect at once", async () => {
    const sb = await server.fork(TEMPLATE);
    try {
      assert.equal((await sh(sb, curl(`http://${API}/`))).code, 7);
      await sb.setNetwork({ egress: "deny", allowOut: [`${API}/32`] });
      assert.deepEqual(sb.network?.allowOut, [`${API}/32`]);
      assert.equal((await sh(sb, curl(`http://${API}/`))).code, 0);
      assert.deepEqual((await server.get(sb.id)).network?.allowOut, [`${API}/32`]);
      await sb.setNetwork({ egress: "deny" });
      assert.equal((await sh(sb, curl(`http://${API}/`))).code, 7);
      // A policy that makes no sense is refused and the old one stays.
      await assert.rejects(sb.setNetwork({ egress: "deny", allowOut: ["not a rule"] }), /bad name/);
      await assert.rejects(sb.setNetwork({ egress: "sometimes" as "deny" }), /egress/);
      assert.equal((await sh(sb, curl(`http://${API}/`))).code, 7);
    } finally {
      await sb.terminate();
    }
  });

  it("forks keep the parent's policy and the addresses it resolved; each child has its own NAT", async () => {
    const parent = await server.fork(TEMPLATE, { network: { egress: "deny", allowOut: ["api.test.example"] } });
    try {
      assert.equal((await sh(parent, curl("http://api.test.example/"))).code, 0);
      const children = await parent.fork(3);
      for (const c of children) {
        assert.deepEqual(c.network, parent.network);
        // The address the parent resolved is still pinned for the child (apps keep cached answers).
        const byIp = await sh(c, curl(`http://${API}:8080/`));
        assert.equal(byIp.code, 0, byIp.out);
        assert.equal((await sh(c, curl("http://api.test.example/"))).code, 0);
        assert.equal((await sh(c, curl(`http://${SECOND}/`))).code, 7);
        await c.terminate();
      }
    } finally {
      await parent.terminate();
    }
  });

  it("a connection open at fork time is dropped in the child and goes on in the parent", async () => {
    const parent = await server.fork(TEMPLATE, { network: { egress: "deny", allowOut: [`${API}/32`] } });
    try {
      // Connects, sends half a request, then waits for /tmp/go to send the rest.
      await parent.files.write(
        "/tmp/conn.py",
        `import os, socket, time
s = socket.create_connection(("${API}", 80), timeout=5)
s.sendall(b"GET /open HTTP/1.1\\r\\n")
open("/tmp/connected", "w").close()
while not os.path.exists("/tmp/go"): time.sleep(0.1)
try:
    s.sendall(b"Host: x\\r\\nConnection: close\\r\\n\\r\\n")
    r = s.recv(100)
    out = r.split(b"\\r\\n")[0].decode() if r else "EOF"
except OSError as e:
    out = type(e).__name__
open("/tmp/result", "w").write(out)
`,
      );
      await parent.exec("nohup python3 /tmp/conn.py >/dev/null 2>&1 &");
      await until("the connection", async () => (await parent.exec("test -e /tmp/connected")).exitCode === 0, 20_000);
      const [child] = await parent.fork(1);
      assert.ok(child);
      const result = async (sb: Sandbox) => {
        await sb.exec("touch /tmp/go");
        return until(
          "a result",
          async () => {
            const r = await sb.exec("cat /tmp/result");
            return r.exitCode === 0 && r.stdout !== "" ? r.stdout : undefined;
          },
          20_000,
        );
      };
      assert.match(await result(child), /^(ConnectionResetError|BrokenPipeError|EOF|TimeoutError)$/);
      assert.match(await result(parent), /^HTTP\/1\.1 200/);
      await child.terminate();
    } finally {
      await parent.terminate();
    }
  });

  it("a template without a NIC refuses a network policy with a remediation", async () => {
    await assert.rejects(
      server.fork("python", { network: { egress: "allow" } }),
      (err: Error & { remediation?: string }) =>
        /has no network device/.test(err.message) && /network/.test(err.remediation ?? ""),
    );
  });
});

describe("restarts and deaths", () => {
  it("a restarted mitosd keeps a networked sandbox's slot and policy and re-points its DNS", async () => {
    const sb = await server.fork(TEMPLATE, { network: { egress: "deny", allowOut: [`${API}/32`] } });
    assert.equal((await sh(sb, curl(`http://${API}/`))).code, 0);
    await daemon.kill();
    daemon = await startMitosd(dataDir, ["--dns-upstream", world.dnsServer]);
    server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
    const again = await server.get(sb.id);
    assert.deepEqual(again.network, { egress: "deny", allowOut: [`${API}/32`], denyOut: [] });
    assert.equal((await sh(again, curl(`http://${API}/`))).code, 0);
    assert.equal((await sh(again, curl(`http://${SECOND}/`))).code, 7);
    // The new run's resolver answers (its port changed; the ruleset was rewritten for it).
    await again.setNetwork({ egress: "deny", allowOut: ["second.test.example"] });
    const r = await sh(again, curl("http://second.test.example/"));
    assert.equal(r.code, 0, r.out);
    await again.terminate();
    await until("its slot to go", () => networkLeaks(dataDir).length === 0, 15_000);
  });

  it("a QEMU that dies takes its slot with it", async () => {
    const sb = await server.fork(TEMPLATE);
    const claims = () => networkLeaks(dataDir).filter((l) => l.startsWith("slot"));
    const mine = claims().length;
    assert.ok(mine >= 1);
    // Kill the sandbox's QEMU from outside (the journal names its pid).
    const journal = readJournal(dataDir);
    const pid = Object.values(journal.vms).find((v) => v.sandboxId === sb.id)?.pid;
    assert.ok(pid && qemuPidsOf(dataDir).includes(pid));
    process.kill(pid, "SIGKILL");
    await until("the dead VM's slot to go", () => claims().length === mine - 1, 20_000);
    await sb.terminate().catch(() => {});
  });
});

describe("cleanup", () => {
  it("50 networked sandboxes created and terminated leave no namespace, veth, claim or rule behind", async () => {
    for (let round = 0; round < 25; round++) {
      const pair = await Promise.all([server.fork(TEMPLATE), server.fork(TEMPLATE)]);
      await Promise.all(pair.map((s) => s.terminate()));
    }
    await assertNoLeaks({ dataDir, shmDir: shmDirFor(dataDir) });
    assert.deepEqual(networkLeaks(dataDir), []);
  });
});
