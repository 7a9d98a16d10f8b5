// Networking measured through the API as users meet it:
// npm run bench:network [-- --quick]
// A real mitosd, a networked template ("net", python, egress deny) and the
// test "internet" (test-support/world.ts: servers in a namespace of their
// own). Rows, each beside its same-run baseline:
//  - claim → first HTTP answer from the outside (networked sandbox) vs
//    claim → first exec (sandbox of the plain python template);
//  - proxy round trip: GET of a guest server through mitosd's port proxy
//    (path-routed) vs an exec round trip (`true`);
//  - guest → outside throughput (curl of 64 MiB from the world server);
//  - fork(8) of a networked sandbox vs fork(8) of a plain one, until all
//    children answered an exec.
// N iterations after one warm-up (10; 3 with --quick). Records to
// bench/results/<date>-network.{json,md} (bench/results/quick/ with --quick).

import { SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { startMitosd } from "../test-support/mitosd.js";
import { until } from "../test-support/until.js";
import { startWorld } from "../test-support/world.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const N = quick ? 3 : 10;
const progress = progressLogger();
const API = "198.51.100.3";
const BIG_MIB = 64;

const world = await startWorld({
  extraIps: [API],
  http: [{ host: API, port: 80 }],
  zone: { "api.test.example": [API] },
  bigMiB: BIG_MIB,
});
const dataDir = tempDataDir("bench-network");
const daemon = await startMitosd(dataDir, ["--dns-upstream", world.dnsServer]);
const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
const { series, add } = seriesList();
const timed = async (f: () => Promise<unknown>) => {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
};

try {
  progress("building templates (python, net)");
  await server.createTemplate("python", {});
  await server.createTemplate("net", { image: "python", network: { egress: "deny" } });
  const policy = { egress: "deny" as const, allowOut: [`${API}/32`] };
  // Both templates claim from a warm pool (python has one by default): a warm networked VM holds its slot already.
  await server.setPoolTarget("net", 2);
  await until(
    "the net pool to be warm",
    async () => (await server.pools()).find((p) => p.template === "net")?.warm === 2,
    300_000,
  );

  const claimNet = add("networked claim → first HTTP answer from outside", "ms");
  const claimPlain = add("baseline: plain claim → first exec", "ms");
  for (let i = 0; i <= N; i++) {
    const t0 = performance.now();
    const sb = await server.fork("net", { network: policy });
    const r = await sb.exec(`curl -sf -m 5 http://${API}/`);
    if (r.exitCode !== 0) throw new Error(`curl failed: ${r.stderr}`);
    if (i > 0) claimNet.values.push(performance.now() - t0);
    await sb.terminate();
    const t1 = performance.now();
    const p = await server.fork("python");
    await p.exec("true");
    if (i > 0) claimPlain.values.push(performance.now() - t1);
    await p.terminate();
  }
  progress("claims done");

  const sb = await server.fork("net", { network: policy });
  await sb.exec("mkdir -p /srv && echo hi > /srv/x && cd /srv && nohup python3 -m http.server 8000 >/dev/null 2>&1 &");
  const url = `${daemon.url}/v1/sandboxes/${sb.id}/ports/8000/x`;
  const auth = { authorization: `Bearer ${daemon.token}` };
  await until("the guest server", async () => (await fetch(url, { headers: auth })).status === 200, 30_000);
  const proxy = add("proxy round trip (GET through mitosd's port proxy)", "ms");
  const execRt = add("baseline: exec round trip (`true`)", "ms");
  for (let i = 0; i <= N * 3; i++) {
    const a = await timed(async () => (await fetch(url, { headers: auth })).text());
    const b = await timed(() => sb.exec("true"));
    if (i > 0) {
      proxy.values.push(a);
      execRt.values.push(b);
    }
  }
  progress("proxy round trips done");

  const tput = add(`guest → outside throughput (curl of ${BIG_MIB} MiB)`, "MiB/s");
  for (let i = 0; i < Math.max(3, Math.ceil(N / 2)); i++) {
    const r = await sb.exec(`curl -sf -o /dev/null -w '%{speed_download}' http://${API}/big`, { timeoutSeconds: 300 });
    if (r.exitCode !== 0) throw new Error(`download failed: ${r.stderr}`);
    tput.values.push(Number(r.stdout) / 2 ** 20);
  }
  progress("throughput done");

  const forkNet = add("fork(8) of a networked sandbox → all children answered", "ms");
  const forkPlain = add("baseline: fork(8) of a plain sandbox → all children answered", "ms");
  const plain = await server.fork("python");
  for (let i = 0; i <= Math.max(3, Math.ceil(N / 2)); i++) {
    for (const [src, s] of [
      [sb, forkNet],
      [plain, forkPlain],
    ] as const) {
      const t0 = performance.now();
      const kids = await src.fork(8);
      await Promise.all(kids.map((k) => k.exec("true")));
      if (i > 0) s.values.push(performance.now() - t0);
      await Promise.all(kids.map((k) => k.terminate()));
    }
  }
  progress("forks done");
  const notes = [
    'Networked sandboxes: template "net" (python, egress deny) with a warm pool of 2 (as python has), each claim with policy allow_out 198.51.100.3/32 (applied at claim: one nft transaction); the "outside" is a server in a test namespace (test-support/world.ts) reached through the slot\'s NAT. The networked claim row includes a curl process in the guest (the plain row runs `true`).',
    "fork(8) rows: a networked fork builds 8 slots (namespace, veth, tap, ruleset with the parent's pins) and cannot use spare VMs (a spare would need its slot before the fork).",
    "Proxy rows: path-routed GET of `python3 -m http.server` in the guest, through the agent channel's port-forward stream (no NIC used).",
  ];
  const accel = (await server.health()).accel ?? "?";
  record("network", { quick, accel, command: `npm run bench:network${quick ? " -- --quick" : ""}` }, series, notes);
} finally {
  await daemon.stop();
  world.close();
  removeDataDir(dataDir);
}
