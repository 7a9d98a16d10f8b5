// Soak with faults: npm run bench:soak [-- --minutes 30 --clients 4 --fault-every 20]
// Drives a real mitosd with mixed create/exec/files/fork/PTY/terminate from
// many clients while QEMUs are killed and stopped, the RAM dir is filled to
// its cap and mitosd restarts (test-support/soak.ts); then checks error
// codes, acknowledged writes, leaks, tokens and mitosd's memory. Records
// bench/results/<date>-soak.{json,md} (runs under 10 minutes: results/quick/).

import { parseArgs } from "node:util";
import { type FaultKind, runSoak, soakProblems } from "../test-support/soak.js";
import { record } from "./record.js";

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "30" },
    clients: { type: "string", default: "4" },
    "fault-every": { type: "string", default: "20" },
    "shm-cap-mib": { type: "string", default: "6144" },
    "data-dir": { type: "string", default: "/var/lib/mitos/bench-soak" },
  },
});
const minutes = Number(values.minutes);
const clients = Number(values.clients);
const faultEvery = Number(values["fault-every"]);
const shmCap = Number(values["shm-cap-mib"]);
if (!(minutes > 0) || !Number.isInteger(clients) || clients < 1 || !(faultEvery >= 5) || !(shmCap >= 1024)) {
  console.error(
    "usage: bench/soak.ts [--minutes N>0] [--clients N>=1] [--fault-every SECONDS>=5] [--shm-cap-mib MIB>=1024] [--data-dir DIR]",
  );
  process.exit(2);
}

const r = await runSoak({
  dataDir: values["data-dir"],
  seconds: Math.round(minutes * 60),
  clients,
  faultEverySeconds: faultEvery,
  shmCapMib: shmCap,
  log: (m) => console.error(m),
});
const problems = soakProblems(r);
const byKind = (k: FaultKind) => r.faults.filter((f) => f.kind === k).length;
const notes = [
  `${clients} clients for ${minutes} min; a fault every ${faultEvery} s in turn (kill_qemu, stop_guest, fill_shm, restart_mitosd): ${byKind("kill_qemu")} QEMUs killed, ${byKind("stop_guest")} guests stopped for 5 s, ${byKind("fill_shm")} RAM-dir fills to its ${shmCap} MiB cap, ${byKind("restart_mitosd")} mitosd restarts.`,
  `Operations that succeeded: ${JSON.stringify(r.ok)}.`,
  `Failures by op:code: ${JSON.stringify(r.errors)}; undocumented codes: ${r.undocumented.length === 0 ? "none" : r.undocumented.join("; ")}.`,
  ...(r.internalSamples.length > 0 ? [`internal errors (samples): ${r.internalSamples.join(" | ")}`] : []),
  `Sandboxes lost to faults (their calls then fail with not_found or conflict, by design): ${r.sandboxesLost}.`,
  `Acknowledged writes read back: ${r.ok.read} times during the run (a random one of the sandbox's, compared), and all ${r.writesChecked} of the sandboxes alive at the end; lost: ${r.lostWrites.length === 0 ? "none" : r.lostWrites.join("; ")}.`,
  `Leak check after every sandbox was terminated and mitosd stopped (QEMUs, RAM-dir and data-dir files, network namespaces and slots): ${r.leaks.length === 0 ? "none" : r.leaks.join("; ")}.`,
  `Tokens of terminated sandboxes that still opened something: ${r.liveTokens.length === 0 ? "none" : r.liveTokens.join("; ")}.`,
  `mitosd RSS by process (MiB, first/max/last): ${r.rssMib.map((p) => `${p.pid}: ${p.first}/${p.max}/${p.last}`).join(", ")}.`,
  `Fault schedule: ${r.faults.map((f) => `${f.atS} s ${f.kind} (${f.detail})`).join("; ")}.`,
  `Result: ${problems.length === 0 ? "PASS" : `FAIL: ${problems.join(" / ")}`}.`,
];
record(
  "soak",
  { quick: minutes < 10, accel: "tcg", command: `npm run bench:soak -- ${process.argv.slice(2).join(" ")}`.trim() },
  [{ name: "mitosd RSS", unit: "MiB", values: r.rssSamples }],
  notes,
);
for (const n of notes) console.log(n);
process.exit(problems.length === 0 ? 0 : 1);
