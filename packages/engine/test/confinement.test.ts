// Confinement on real VMs: each QEMU runs as its own uid, in its seccomp
// sandbox, without privileges, and one VM's uid cannot read, connect to or
// signal another VM's files, sockets or process. Needs root (skipped otherwise).

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir } from "../../../test-support/data-dir.js";
import { defaultDataDir } from "../src/config.js";
import { Confinement, claimBlock, ID_RANGE, preferredBlock } from "../src/confine.js";
import { Engine, type MitosError, type SandboxInfo } from "../src/index.js";
import { THP_OFF_HELPER, thpOffHelper } from "../src/qemu/huge-pages.js";

const root = defaultDataDir();
const imagesDir = path.join(root, "images");
const dataDir = path.join(root, "test-confine");
const shmDir = "/dev/shm/mitos-test-confine";
const isRoot = process.getuid?.() === 0;
let engine: Engine;
let a: SandboxInfo;
let b: SandboxInfo;
let child: SandboxInfo;

interface Ids {
  uid: number[];
  gid: number[];
  groups: string;
  noNewPrivs: string;
  seccomp: string;
  capEff: string;
}

function ids(pid: number): Ids {
  const st = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (k: string) => new RegExp(`^${k}:[ \\t]*(.*)$`, "m").exec(st)?.[1]?.trim() ?? "";
  return {
    uid: field("Uid").split(/\s+/).map(Number),
    gid: field("Gid").split(/\s+/).map(Number),
    groups: field("Groups"),
    noNewPrivs: field("NoNewPrivs"),
    seccomp: field("Seccomp"),
    capEff: field("CapEff"),
  };
}

const vmDir = (pid: number) => {
  const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  const qmp = cmd.find((a) => a.startsWith("unix:") && a.includes("/qmp.sock"));
  assert.ok(qmp, "QEMU has a QMP socket in its runtime dir");
  return path.dirname(qmp.slice("unix:".length).split(",")[0] as string);
};

/** The RAM file a QEMU maps (it may be unlinked already): its stat through /proc/<pid>/map_files. */
function mappedRam(pid: number, re: RegExp): fs.Stats {
  const line = fs
    .readFileSync(`/proc/${pid}/maps`, "utf8")
    .split("\n")
    .find((l) => re.test(l));
  assert.ok(line, `QEMU ${pid} maps a file matching ${re}`);
  return fs.statSync(`/proc/${pid}/map_files/${line.split(" ")[0]}`);
}

/** Runs a program as another uid/gid (no supplementary groups); returns exit status and stderr. */
function runAs(uid: number, gid: number, cmd: string, args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(cmd, args, { uid, gid, encoding: "utf8", timeout: 10_000 });
  return { status: r.status, stderr: r.stderr };
}

const connectScript =
  "const s=require('net').connect(process.argv[1]);s.on('connect',()=>{console.log('connected');process.exit(0)});s.on('error',(e)=>{console.error(e.code);process.exit(3)})";

/** The start of a QEMU's first mapping, as a decimal offset into /proc/<pid>/mem. */
function firstMapped(pid: number): string {
  const start = fs.readFileSync(`/proc/${pid}/maps`, "utf8").split("-")[0] as string;
  return BigInt(`0x${start}`).toString();
}

const mode = (st: fs.Stats) => (st.mode & 0o7777).toString(8);

before(
  async () => {
    if (!isRoot) return;
    // From scratch, so the template build runs confined too.
    removeDataDir(dataDir, shmDir);
    fs.mkdirSync(shmDir, { recursive: true });
    engine = await Engine.open({ dataDir, shmDir, imagesDir, poolTargets: { python: 0 } });
    await engine.createTemplate("python");
    [a, b] = await Promise.all([engine.create("python"), engine.create("python")]);
    const r = await engine.fork(b.id, { count: 1 });
    child = r.children[0] as SandboxInfo;
  },
  { timeout: 300_000 },
);

after(async () => {
  await engine?.close({ killSandboxes: true });
  // Built from scratch each run: free the template's RAM now.
  if (isRoot) removeDataDir(dataDir, shmDir);
});

describe("QEMU confinement", { skip: isRoot ? false : "needs root" }, () => {
  it("each QEMU runs as a uid of its own, in its base's group, with seccomp and no privileges", () => {
    assert.equal(engine.confinement.uids, true);
    const [ia, ib, ic] = [a, b, child].map((s) => ids(s.pid)) as [Ids, Ids, Ids];
    for (const i of [ia, ib, ic]) {
      assert.equal(new Set(i.uid).size, 1, `real, effective, saved and fs uid agree: ${i.uid}`);
      assert.equal(new Set(i.gid).size, 1, `gids agree: ${i.gid}`);
      assert.ok((i.uid[0] as number) >= ID_RANGE.first, `uid ${i.uid[0]} is in the reserved range`);
      assert.equal(i.groups, "", "no supplementary groups");
      assert.equal(i.noNewPrivs, "1");
      assert.equal(i.seccomp, "2", "seccomp filter mode");
      assert.equal(i.capEff, "0000000000000000");
    }
    assert.notEqual(ia.uid[0], ib.uid[0]);
    assert.notEqual(ib.uid[0], ic.uid[0]);
    // Sandboxes of one template share its group; a fork's children get the base's own.
    assert.equal(ia.gid[0], ib.gid[0]);
    assert.notEqual(ic.gid[0], ib.gid[0]);
    const cmd = fs.readFileSync(`/proc/${a.pid}/cmdline`, "utf8").split("\0");
    assert.ok(
      cmd.join(" ").includes("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"),
    );
  });

  it("each QEMU runs without transparent huge pages, through the setpriv and nice wrappers (decision 0032)", () => {
    assert.ok(thpOffHelper(), `the helper is built: ${THP_OFF_HELPER}`);
    for (const s of [a, b, child]) {
      const st = fs.readFileSync(`/proc/${s.pid}/status`, "utf8");
      assert.match(st, /^THP_enabled:\s+0$/m, `QEMU ${s.pid} (${s.id}) may get huge pages`);
      const huge = [...fs.readFileSync(`/proc/${s.pid}/smaps`, "utf8").matchAll(/^AnonHugePages:\s+(\d+) kB/gm)];
      assert.ok(huge.length > 0, "smaps lists AnonHugePages");
      assert.deepEqual(
        huge.filter((m) => m[1] !== "0").map((m) => m[0]),
        [],
        `QEMU ${s.pid} holds huge pages`,
      );
    }
  });

  it("restored, forked and exec'd VMs work under it (exec, PTY)", async () => {
    for (const s of [a, b, child]) {
      const r = await engine.exec(s.id, { command: "id -u; python3 -c 'print(6*7)'" }).result;
      assert.equal(r.exitCode, 0, r.stderr.toString());
      assert.equal(r.stdout.toString(), "0\n42\n");
    }
    const t = await engine.exec(a.id, { command: "tty", pty: { cols: 80, rows: 24 } }).result;
    assert.match(t.stdout.toString(), /^\/dev\/pts\/\d+/);
  });

  it("the engine's files have the modes and owners the design says", () => {
    const st = (p: string) => fs.statSync(p);
    assert.equal(mode(st(dataDir)), "711");
    assert.equal(mode(st(path.join(dataDir, "vms"))), "711");
    assert.equal(mode(st(shmDir)), "711");
    for (const d of ["templates", "bases"]) assert.equal(mode(st(path.join(dataDir, d))), "700");
    assert.equal(mode(st(path.join(dataDir, "journal.json"))), "600");
    assert.equal(mode(st(path.join(dataDir, "journal.log"))), "600");
    assert.equal(mode(st(path.join(dataDir, "templates", "python.state"))), "600");
    for (const s of [a, b, child]) {
      const { uid } = ids(s.pid);
      const dir = vmDir(s.pid);
      const d = st(dir);
      assert.equal(mode(d), "700", dir);
      assert.equal(d.uid, uid[0]);
      for (const f of ["agent.sock", "qmp.sock"]) {
        const x = st(path.join(dir, f));
        assert.ok(x.isSocket());
        assert.equal(x.uid, uid[0], f);
        assert.equal(x.mode & 0o077, 0, `${f} is its owner's only (${mode(x)})`);
      }
      const console = st(path.join(dir, "console.log"));
      assert.equal(console.uid, uid[0]);
      assert.equal(mode(console), "600");
      const qemuLog = st(path.join(dir, "qemu.log"));
      assert.equal(qemuLog.uid, 0);
      assert.equal(mode(qemuLog), "600");
    }
    // RAM bases: root-owned, read-write for their group only (QEMU 7.2 opens private RAM files read-write).
    const tpl = engine.templateRecord("python");
    assert.ok(tpl);
    const t = st(tpl.ramFile);
    assert.equal(t.uid, 0);
    assert.equal(t.gid, ids(a.pid).gid[0]);
    assert.equal(mode(t), "660");
    assert.deepEqual(
      fs.readdirSync(shmDir).filter((f) => f.includes("base")),
      [],
      "a fork base is unlinked once its children mapped it",
    );
    const base = mappedRam(child.pid, /mitos-base-.*\.ram/);
    assert.equal(base.uid, 0);
    assert.equal(base.gid, ids(child.pid).gid[0]);
    assert.equal(mode(base), "660");
    assert.equal(mappedRam(a.pid, /mitos-tpl-.*\.ram/).ino, t.ino, "sandbox a maps the template base");
  });

  it("one VM's uid cannot read, list, connect to or signal another VM", () => {
    const ia = ids(a.pid);
    const [ua, ga] = [ia.uid[0] as number, ia.gid[0] as number];
    const dirA = vmDir(a.pid);
    const dirB = vmDir(b.pid);
    // What a uid might try against a VM's QEMU. Each works as the VM's own uid
    // (the control) and must fail as another VM's uid.
    const probes = (pid: number, dir: string) =>
      [
        ["list its dir", "ls", [dir]],
        ["read its console log", "cat", [path.join(dir, "console.log")]],
        ["read its QEMU's environment", "cat", [`/proc/${pid}/environ`]],
        [
          "read its QEMU's memory",
          "dd",
          [`if=/proc/${pid}/mem`, "of=/dev/null", "bs=1", "count=1", `skip=${firstMapped(pid)}`],
        ],
        ["signal its QEMU", "kill", ["-0", String(pid)]],
        ["connect to its QMP socket", process.execPath, ["-e", connectScript, path.join(dir, "qmp.sock")]],
      ] as const;
    for (const [what, cmd, args] of probes(a.pid, dirA)) {
      const r = runAs(ua, ga, cmd, [...args]);
      assert.equal(r.status, 0, `control: VM A's uid could not ${what}: ${r.stderr}`);
    }
    for (const [pid, dir] of [
      [b.pid, dirB],
      [child.pid, vmDir(child.pid)],
    ] as const) {
      for (const [what, cmd, args] of probes(pid, dir)) {
        const r = runAs(ua, ga, cmd, [...args]);
        assert.notEqual(r.status, 0, `VM A's uid could ${what} (pid ${pid})`);
      }
    }
    // The engine's own files: root reads them (control), a VM's uid does not.
    for (const [what, cmd, args] of [
      ["read B's QEMU log", "cat", [path.join(dirB, "qemu.log")]],
      ["list the VM dirs", "ls", [path.join(dataDir, "vms")]],
      ["list the RAM dir", "ls", [shmDir]],
      ["read the journal", "cat", [path.join(dataDir, "journal.json")]],
      ["read the journal's log", "cat", [path.join(dataDir, "journal.log")]],
      ["read the template state", "cat", [path.join(dataDir, "templates", "python.state")]],
    ] as const) {
      assert.equal(spawnSync(cmd, [...args], { stdio: "ignore" }).status, 0, `control: root could not ${what}`);
      assert.notEqual(runAs(ua, ga, cmd, [...args]).status, 0, `VM A's uid could ${what}`);
    }
    for (const sock of ["agent.sock", "qmp.sock"]) {
      const r = runAs(ua, ga, process.execPath, ["-e", connectScript, path.join(dirB, sock)]);
      assert.equal(r.status, 3, `uid ${ua} connected to B's ${sock}`);
      assert.match(r.stderr, /EACCES/);
    }
    // The fork child's uid and group open neither the template base nor a template sibling's dir.
    const ic = ids(child.pid);
    const tpl = engine.templateRecord("python")?.ramFile as string;
    const w = runAs(ic.uid[0] as number, ic.gid[0] as number, "sh", ["-c", `exec 3<>${tpl}`]);
    assert.notEqual(w.status, 0, "a fork child could open the template base");
    assert.notEqual(runAs(ic.uid[0] as number, ic.gid[0] as number, "ls", [dirA]).status, 0);
  });

  it("a stopped VM's dir goes back to root before its uid can be handed out again", async () => {
    const pid = child.pid;
    const dir = vmDir(pid);
    process.kill(pid, "SIGKILL");
    const until = Date.now() + 10_000;
    while (engine.get(child.id).state !== "failed" && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.equal(engine.get(child.id).state, "failed");
    const d = fs.statSync(dir);
    assert.equal(d.uid, 0);
    assert.equal(mode(d), "700");
  });
});

describe("confinement without root, and the id registry", () => {
  it("does not switch uids when mitosd is not root, and says why", () => {
    const c = Confinement.open({
      dataDir: "/nonexistent",
      shmDir: "/nonexistent",
      imagesDir: "/nonexistent",
      uid: 1000,
    });
    assert.equal(c.uids, false);
    assert.match(c.reason, /not root/);
    assert.equal(c.group(), undefined);
    assert.equal(c.runAs(undefined, "tcg"), undefined);
  });

  it("refuses a data dir QEMU could not reach, saying which dir to open up", () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-closed-"));
    try {
      const data = path.join(tmp, "data");
      for (const d of [data, path.join(data, "vms"), path.join(tmp, "shm")]) fs.mkdirSync(d, { recursive: true });
      const open = () =>
        Confinement.open({
          dataDir: data,
          shmDir: path.join(tmp, "shm"),
          imagesDir: path.join(data, "images"),
          registryDir: path.join(tmp, "registry"),
          uid: 0,
        });
      assert.throws(open, (e: MitosError) => {
        assert.equal(e.code, "unavailable");
        assert.match(e.message, /cannot pass through/);
        assert.match(e.remediation, new RegExp(`chmod o\\+x ${tmp}`));
        return true;
      });
      fs.chmodSync(tmp, 0o711);
      assert.equal(open().uids, true);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it("gives each data dir its own block, keeps it, and frees blocks of data dirs that are gone", () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-idreg-"));
    try {
      const registry = path.join(tmp, "registry");
      const [d1, d2] = [path.join(tmp, "d1"), path.join(tmp, "d2")];
      for (const d of [registry, d1, d2]) fs.mkdirSync(d);
      const p = preferredBlock(d1);
      // d2 holds the block d1 would like: d1 moves on, and keeps what it got.
      fs.writeFileSync(path.join(registry, String(p)), d2);
      const b1 = claimBlock(d1, registry);
      assert.notEqual(b1, p);
      assert.equal(claimBlock(d1, registry), b1);
      assert.equal(fs.readFileSync(path.join(registry, String(b1)), "utf8"), d1);
      // Once d2 is gone its block is free again.
      fs.rmSync(d2, { recursive: true });
      fs.rmSync(path.join(registry, String(b1)));
      assert.equal(claimBlock(d1, registry), p);
      assert.equal(fs.readFileSync(path.join(registry, String(p)), "utf8"), d1);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
