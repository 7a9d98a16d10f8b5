// No network by default: a real guest has only its loopback and cannot reach
// a server on any of the host's addresses (loopback included).

import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { defaultDataDir, defaultShmDir } from "../src/config.js";
import { BUILTIN_RECIPES, ensureImages, Vm } from "../src/index.js";
import { qemuArgs } from "../src/qemu/command.js";

const dataDir = defaultDataDir();
let vm: Vm;
const servers: Array<{ host: string; port: number; server: net.Server; connections: number }> = [];

/** The host's addresses a server can listen on: loopback and every interface's (not link-local). */
function hostAddresses(): string[] {
  const addrs = new Set(["127.0.0.1"]);
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (!a.address.startsWith("fe80:")) addrs.add(a.address);
  }
  return [...addrs];
}

before(
  async () => {
    for (const host of hostAddresses()) {
      const entry = { host, port: 0, server: net.createServer(), connections: 0 };
      entry.server.on("connection", (s) => {
        entry.connections++;
        s.destroy();
      });
      try {
        await new Promise<void>((resolve, reject) => {
          entry.server.once("error", reject);
          entry.server.listen(0, host, () => resolve());
        });
      } catch {
        continue; // e.g. ::1 on a host without IPv6
      }
      entry.port = (entry.server.address() as net.AddressInfo).port;
      servers.push(entry);
    }
    const images = await ensureImages(BUILTIN_RECIPES.python!, { cacheDir: path.join(dataDir, "images") });
    vm = await Vm.boot({ id: `test-net-${process.pid}`, images, dataDir, shmDir: defaultShmDir(), timeoutMs: 120_000 });
  },
  { timeout: 180_000 },
);

after(async () => {
  await vm?.destroy();
  for (const s of servers) s.server.close();
});

// Each target: "ok" when connected, else the errno name. A listener inside the
// guest is the control: the same code does report a connection that works.
const PROBE = `
import errno, json, socket, sys
targets = json.loads(sys.argv[1])
own = socket.socket(); own.bind(("127.0.0.1", 0)); own.listen(1)
targets.append(["127.0.0.1", own.getsockname()[1]])
out = []
for host, port in targets:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port)); out.append("ok")
    except socket.timeout:
        out.append("timeout")
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        s.close()
print(json.dumps(out))
`;

describe("no network by default", () => {
  it("QEMU gets no network device", () => {
    const args = qemuArgs({
      accel: "tcg",
      vcpus: 1,
      memMiB: 128,
      kernel: "k",
      initrd: "i",
      rootfs: "r",
      memory: { path: "m", share: false },
      paths: { agentSocket: "a", qmpSocket: "q", consoleLog: "c" },
      pit: false,
    });
    assert.ok(args.includes("-nodefaults"));
    assert.equal(args[args.indexOf("-nic") + 1], "none");
    for (const a of args) assert.doesNotMatch(a, /^-(netdev|net)$|virtio-net|user,|tap,/);
    const cmd = fs.readFileSync(`/proc/${vm.pid}/cmdline`, "utf8").split("\0");
    assert.ok(!cmd.includes("-netdev") && !cmd.includes("-net"));
  });

  it("the guest sees only its loopback interface", async () => {
    const r = await vm.agent.exec({ command: "ls /sys/class/net; tail -n +3 /proc/net/dev | cut -d: -f1" }).result;
    assert.equal(r.exitCode, 0, r.stderr.toString());
    assert.deepEqual(r.stdout.toString().split(/\s+/).filter(Boolean), ["lo", "lo"]);
  });

  it("the guest cannot reach servers on the host's addresses, loopback included", async () => {
    assert.ok(servers.length >= 1);
    const targets = servers.map((s) => [s.host, s.port]);
    const r = await vm.agent.exec({ args: ["python3", "-c", PROBE, JSON.stringify(targets)], timeoutMs: 60_000 })
      .result;
    assert.equal(r.exitCode, 0, r.stderr.toString());
    const out = JSON.parse(r.stdout.toString()) as string[];
    assert.equal(out.at(-1), "ok", "control: a listener inside the guest is reachable");
    servers.forEach((s, i) => {
      const loopback = s.host === "127.0.0.1" || s.host === "::1";
      // The guest's own loopback refuses (nothing listens there); any other address has no route.
      const expected = loopback ? ["ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH"] : ["ENETUNREACH", "EHOSTUNREACH"];
      assert.ok(expected.includes(out[i] as string), `${s.host}:${s.port} -> ${out[i]}`);
    });
    for (const s of servers) assert.equal(s.connections, 0, `the host server on ${s.host} saw a connection`);
  });
});
