// End to end on real microVMs: templates, warm pools, restore, live fork,
// isolation and identity after a fork, memory accounting, faults.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { qemuPidsOf } from "../../../test-support/leaks.js";
import { AgentClient } from "../src/agent/client.js";
import { defaultDataDir } from "../src/config.js";
import { Engine, type MitosError } from "../src/index.js";
import { hostTotals } from "../src/metering.js";
import { Vm } from "../src/vm.js";

const root = defaultDataDir();
const imagesDir = path.join(root, "images");
const shmDir = "/dev/shm/mitos-test-engine";
const dataDir = tempDataDir("test-engine", shmDir);
let engine: Engine;
const logs: Array<{ msg: string; fields: Record<string, unknown> }> = [];

/** How many processes in the sandbox run exactly `cmdline` (the images have no pgrep). */
const running = async (id: string, cmdline: string) =>
  Number(
    await sh(
      id,
      `for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^${cmdline} $' || true`,
    ),
  );

const sh = async (id: string, command: string) => {
  const r = await engine.exec(id, { command }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};

before(async () => {
  fs.mkdirSync(shmDir, { recursive: true });
  engine = await Engine.open({
    dataDir,
    shmDir,
    imagesDir,
    poolTargets: { python: 1 },
    reclaimDelayMs: 1000,
    log: (msg, fields) => logs.push({ msg, fields: fields ?? {} }),
  });
  await engine.createTemplate("python");
});

after(async () => {
  await engine?.close({ killSandboxes: true });
  removeDataDir(dataDir, shmDir);
});

describe("templates and warm pools", () => {
  it("builds the python template once and keeps a warm VM", async () => {
    const again = await engine.createTemplate("python");
    assert.equal(again.id, "python");
    assert.deepEqual(
      engine.listTemplates().map((t) => t.id),
      ["python"],
    );
    await waitFor(() => engine.poolStatus().some((p) => p.template === "python" && p.warm === 1), 60_000);
  });

  it("hands out a pooled sandbox without booting a kernel", async () => {
    const tpl = engine.templateRecord("python")!;
    const sb = await engine.create("python");
    const info = await engine.agent(sb.id).hello();
    // The template's kernel instance (uptime continues from it), with a boot id of its own.
    assert.ok(info.uptimeMs >= tpl.uptimeMs, `uptime ${info.uptimeMs} < template ${tpl.uptimeMs}`);
    assert.match(info.bootId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.notEqual(info.bootId, tpl.bootId);
    assert.equal(info.hostname, sb.id);
    assert.equal(engine.poolStatus().find((p) => p.template === "python")?.claimed, 1);
    assert.equal((await sh(sb.id, "python3 -c 'print(6*7)'")).trim(), "42");
    await engine.terminate(sb.id);
  });

  it("fork-notify gives each restored clone its own /dev/urandom stream", async (t) => {
    const tpl = engine.templateRecord("python")!;
    const snapshot = { machine: tpl.machine, ramFile: tpl.ramFile, stateFile: tpl.stateFile, ignoreShared: true };
    const vms = await Promise.all(
      [0, 1, 2, 3].map((i) => Vm.restore({ id: `rng-${i}-${process.pid}`, dataDir, snapshot, paused: true })),
    );
    try {
      // Clones 0 and 1 run without fork-notify, 2 and 3 with it.
      const bytes = await Promise.all(
        vms.map(async (vm, i) => {
          const agent = await AgentClient.connect(vm.paths.agentSocket, 10_000);
          await vm.qmp.execute("cont");
          await agent.waitReady(30_000);
          if (i >= 2) assert.equal((await agent.forkNotify({ sandboxId: `rng${i}`, hostname: "rng" })).reseeded, true);
          return (await agent.readFile("/dev/urandom", { length: 32 })).toString("hex");
        }),
      );
      assert.notEqual(bytes[2], bytes[3], "reseeded siblings differ");
      for (const plain of [bytes[0], bytes[1]]) {
        assert.notEqual(bytes[2], plain);
        assert.notEqual(bytes[3], plain);
      }
      // Without the reseed, clones usually repeat the template's CRNG output;
      // the kernel's own early-boot reseed sometimes masks it, so this is
      // reported rather than asserted.
      t.diagnostic(`clones without fork-notify ${bytes[0] === bytes[1] ? "repeated the same bytes" : "differed"}`);
    } finally {
      await Promise.all(vms.map((vm) => vm.destroy()));
    }
  });
});

describe("live fork", () => {
  let parent: string;

  before(async () => {
    parent = (await engine.create("python")).id;
    await sh(
      parent,
      'echo parent-state > /root/state.txt; python3 -c \'open("/tmp/py.txt","w").write(str(sum(range(10))))\'; ' +
        "(while :; do echo tick >> /tmp/ticks; sleep 0.2; done) >/dev/null 2>&1 &",
    );
  });

  it("children see the parent's files and its background process keeps running in each", async () => {
    const { children } = await engine.fork(parent, { count: 2 });
    assert.equal(children.length, 2);
    for (const c of children) {
      assert.equal(c.parentId, parent);
      assert.equal(await sh(c.id, "cat /root/state.txt /tmp/py.txt"), "parent-state\n45");
      const n1 = Number(await sh(c.id, "wc -l < /tmp/ticks"));
      await new Promise((r) => setTimeout(r, 1200));
      const n2 = Number(await sh(c.id, "wc -l < /tmp/ticks"));
      assert.ok(n2 > n1, `ticker did not run in ${c.id}: ${n1} -> ${n2}`);
    }
    await Promise.all(children.map((c) => engine.terminate(c.id)));
  });

  it("gives back the template pages a capture faulted in, while VMs still map them", async () => {
    const tpl = engine.templateRecord("python")!;
    const allocated = () => fs.statSync(tpl.ramFile).blocks * 512;
    const { children } = await engine.fork(parent, { count: 1 });
    // QEMU read all 512 MiB to find zero pages; only the non-zero ones may stay
    // (about 290 MiB: the python template holds a kernel with numpy, pandas and matplotlib loaded).
    await waitFor(() => allocated() < 384 * 1024 * 1024, 30_000);
    const child = children[0]!;
    assert.equal(await sh(child.id, "cat /root/state.txt"), "parent-state\n");
    assert.equal(await sh(parent, "python3 -c 'print(6*7)'"), "42\n");
    await engine.terminate(child.id);
  });

  it("a second fork loads spare QEMUs that were waiting on the empty base file", async () => {
    const first = await engine.fork(parent, { count: 2 });
    await Promise.all(first.children.map((c) => engine.terminate(c.id)));
    await waitFor(() => engine.spareStatus().ready === 2, 30_000);
    const waiting = engine.spareStatus().pids;
    // As root, spares wait at low priority (their session's autogroup and every thread); children run at normal.
    const root = process.getuid?.() === 0;
    if (root) for (const pid of waiting) assert.deepEqual(priority(pid, 19), { autogroup: 19, threads: [19] });
    const { children } = await engine.fork(parent, { count: 2 });
    assert.deepEqual(children.map((c) => c.pid).sort(), [...waiting].sort(), "the children are the spares");
    if (root) for (const c of children) assert.deepEqual(priority(c.pid, 0), { autogroup: 0, threads: [0] });
    const seen = await Promise.all(children.map((c) => sh(c.id, "cat /root/state.txt; hostname")));
    assert.deepEqual(
      seen,
      children.map((c) => `parent-state\n${c.id}\n`),
    );
    await Promise.all(children.map((c) => engine.terminate(c.id)));
  });

  it("the next fork's base is copied ahead into the spares' file: the same source again, down a chain, and not for another source", async () => {
    /** Whether the last mapping capture of `since` on found the base already in its file. */
    const prefilled = (since: number) =>
      logs.slice(since).findLast((l) => l.msg === "captured from the RAM mapping")?.fields.basePrefilled;
    /** Waits until the spares (and the base copy into their file, which the fork would wait for) are ready. */
    const settled = async () => {
      await new Promise((r) => setTimeout(r, 1200));
      await waitFor(() => engine.spareStatus().ready > 0, 30_000);
    };
    const first = await engine.fork(parent, { count: 1 });
    await Promise.all(first.children.map((c) => engine.terminate(c.id)));
    await settled();
    // The same source again: it changed since, and the children see the change over the copied base.
    await sh(parent, "echo second > /root/again.txt");
    let since = logs.length;
    const again = await engine.fork(parent, { count: 2 });
    assert.equal(prefilled(since), true, "the parent's base was in the spares' file");
    for (const c of again.children)
      assert.equal(await sh(c.id, "cat /root/state.txt /root/again.txt"), "parent-state\nsecond\n");
    // Down a chain: a child forked, then its child (whose base is the one this fork makes).
    const [a] = again.children;
    await Promise.all(again.children.slice(1).map((c) => engine.terminate(c.id)));
    await settled();
    await sh(a!.id, "echo a > /root/gen.txt");
    const b = (await engine.fork(a!.id, { count: 1 })).children[0]!;
    await settled();
    await sh(b.id, "echo b >> /root/gen.txt");
    since = logs.length;
    const c = (await engine.fork(b.id, { count: 1 })).children[0]!;
    assert.equal(prefilled(since), true, "the chain's next base was in the spares' file");
    assert.equal(await sh(c.id, "cat /root/gen.txt /root/again.txt"), "a\nb\nsecond\n");
    // Another source of the same machine: the copy ahead is of the wrong base, and is not used.
    await settled();
    const other = await engine.create("python");
    await sh(other.id, "echo other > /root/state.txt");
    since = logs.length;
    const o = (await engine.fork(other.id, { count: 1 })).children[0]!;
    assert.equal(prefilled(since), false, "a different base was copied over it");
    assert.equal(await sh(o.id, "cat /root/state.txt; cat /root/again.txt 2>/dev/null || echo none"), "other\nnone\n");
    for (const id of [a!.id, b.id, c.id, other.id, o.id]) await engine.terminate(id);
  });

  it("fork(4): each child's writes are its own; the parent and siblings never see them", async () => {
    const { children } = await engine.fork(parent, { count: 4 });
    await Promise.all(children.map((c, i) => sh(c.id, `echo child-${i} > /root/state.txt`)));
    const reads = await Promise.all(children.map((c) => sh(c.id, "cat /root/state.txt")));
    assert.deepEqual(
      reads,
      children.map((_, i) => `child-${i}\n`),
    );
    assert.equal(await sh(parent, "cat /root/state.txt"), "parent-state\n");

    // Identity: entropy, UUIDs, boot id and hostname per child (and per grandchild:
    // its notice finds the boot id already bound); clock within 1 s of the host.
    const grandchild = (await engine.fork(children[0]!.id, { count: 1 })).children[0]!;
    const ids = [parent, ...children.map((c) => c.id), grandchild.id];
    const probe = await Promise.all(
      ids.map((id) =>
        sh(
          id,
          "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/uuid; hostname; cat /proc/sys/kernel/random/boot_id /etc/hostname /run/mitos/sandbox-id; echo; stat -c %d:%i /etc/hostname /run/mitos/hostname | uniq | wc -l",
        ),
      ),
    );
    const rows = probe.map((p) => p.trim().split("\n"));
    assert.equal(new Set(rows.map((r) => r[0])).size, ids.length, "urandom differs everywhere");
    assert.equal(new Set(rows.map((r) => r[1])).size, ids.length, "uuids differ everywhere");
    for (const [i, r] of rows.entries()) assert.equal(r[2], ids[i]);
    assert.equal(new Set(rows.map((r) => r[3])).size, ids.length, "boot ids differ everywhere");
    for (const [i, r] of rows.entries()) assert.deepEqual([r[4], r[5]], [ids[i], ids[i]], "/etc/hostname, sandbox-id");
    // /etc/hostname is a bind mount of /run/mitos/hostname, as in a container (one inode).
    for (const r of rows) assert.equal(r[6], "1", "/etc/hostname and /run/mitos/hostname are one file");
    // Without that mount (an image init could not bind), the notice renames a new /etc/hostname in;
    // a sandbox id or boot id file a command removed is made again (and the boot id bound again).
    await sh(
      children[1]!.id,
      "umount /etc/hostname && rm /run/mitos/hostname /run/mitos/sandbox-id /run/mitos/boot_id",
    );
    const unbound = (await engine.fork(children[1]!.id, { count: 1 })).children[0]!;
    const [etc, uname, sid, boot] = (
      await sh(
        unbound.id,
        "cat /etc/hostname; hostname; cat /run/mitos/sandbox-id; echo; cat /proc/sys/kernel/random/boot_id",
      )
    ).split("\n");
    assert.deepEqual([etc, uname, sid], [unbound.id, unbound.id, unbound.id]);
    assert.match(boot ?? "", /^[0-9a-f-]{36}$/);
    assert.notEqual(boot, rows[2]![3], "the removed file's boot id is not what /proc shows");
    await engine.terminate(unbound.id);
    for (const id of ids) {
      const before = Date.now() / 1000;
      const guest = Number(await sh(id, "date +%s.%N"));
      const afterT = Date.now() / 1000;
      assert.ok(guest > before - 1 && guest < afterT + 1, `clock of ${id} is ${guest}, host ${before}..${afterT}`);
    }
    await Promise.all([...children, grandchild].map((c) => engine.terminate(c.id)));
  });

  it("a Python process alive at fork time that registers for the notice gets SIGUSR2 in each child and reseeds", async () => {
    const src = await engine.create("python");
    try {
      // Seeded alike before the fork: without the notice every child would draw the same numbers.
      const prog = [
        "import os, random, signal, time",
        "random.seed(7)",
        'def on_fork(*_): random.seed(); open("/tmp/reg", "w").write(str(random.random()))',
        "signal.signal(signal.SIGUSR2, on_fork)",
        'open("/run/mitos/notify/%d" % os.getpid(), "w").close()',
        'open("/tmp/reg.ready", "w").close()',
        "while True: time.sleep(0.05)",
      ].join("\n");
      await engine.agent(src.id).writeFile("/workspace/reg.py", prog);
      await sh(src.id, "(python3 reg.py &) >/dev/null 2>&1; while [ ! -e /tmp/reg.ready ]; do sleep 0.1; done");
      const { children } = await engine.fork(src.id, { count: 2 });
      const read = async (id: string) => {
        for (let i = 0; i < 100; i++) {
          const r = await engine.exec(id, { command: "cat /tmp/reg 2>/dev/null" }).result;
          if (r.stdout.length > 0) return r.stdout.toString();
          await new Promise((res) => setTimeout(res, 100));
        }
        throw new Error(`the notice never reached the interpreter in ${id}`);
      };
      const draws = await Promise.all(children.map((c) => read(c.id)));
      assert.notEqual(draws[0], draws[1], "each child reseeded from its own entropy");
      assert.equal(
        await sh(src.id, "test -e /tmp/reg && echo notified || echo not"),
        "not\n",
        "the source got no notice",
      );
      await Promise.all(children.map((c) => engine.terminate(c.id)));
    } finally {
      await engine.terminate(src.id);
    }
  });

  it("env: children inherit the create-time env; an exec's env stays in that exec", async () => {
    const src = await engine.create("python", { env: { MITOS_TEST_SECRET: "s1" } });
    try {
      const { children } = await engine.fork(src.id, { count: 2 });
      const [a, b] = children as [(typeof children)[0], (typeof children)[0]];
      assert.equal(await sh(a.id, "echo $MITOS_TEST_SECRET"), "s1\n");
      const own = await engine.exec(a.id, { command: "echo $ONLY", env: { ONLY: "for-a" } }).result;
      assert.equal(own.stdout.toString(), "for-a\n");
      assert.equal(await sh(b.id, 'echo "[$ONLY]" $MITOS_TEST_SECRET'), "[] s1\n");
      assert.equal(await sh(a.id, 'echo "[$ONLY]"'), "[]\n", "nor in the next exec of the same child");
      await Promise.all(children.map((c) => engine.terminate(c.id)));
    } finally {
      await engine.terminate(src.id);
    }
  });

  it("an exec in flight at fork time finishes in the parent, runs on silently in the child, and never collides with the child's own calls", async () => {
    // A daemon left by a finished exec (its cgroup outlives the call), and a command still streaming.
    await sh(parent, "setsid nohup sleep 1000 >/dev/null 2>&1 & echo started");
    let parentOut = "";
    const inflight = engine.exec(parent, {
      command: "for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.5; done",
      onStdout: (c) => {
        parentOut += c.toString();
      },
    });
    await inflight.started;
    const { children } = await engine.fork(parent, { count: 1 });
    const child = children[0]!;
    try {
      // The child's connection numbers its calls from 1 again, through the parent's stream ids (the
      // in-flight one, the daemon's): each call gets its own answer, and killing one (its whole
      // cgroup) takes only its own processes.
      for (let i = 0; i < 60; i++) {
        assert.equal(await sh(child.id, `echo c-${i}`), `c-${i}\n`);
        const h = engine.exec(child.id, { command: "sleep 30" });
        await h.started;
        h.signal(9);
        assert.equal((await h.result).exitCode, 137);
      }
      const killed = await engine.exec(child.id, { command: "sleep 30", timeoutMs: 500 }).result;
      assert.equal(killed.exitCode, 124);
      assert.equal(await running(child.id, "sleep 1000"), 1, "the daemon survives in the child");
      // The inherited loop runs on in the child (its output goes nowhere) and ends by itself.

      const r = await inflight.result;
      assert.equal(r.exitCode, 0);
      assert.equal(parentOut.match(/tick-\d/g)?.length, 8, `the parent's caller got all its output: ${parentOut}`);
      await new Promise((res) => setTimeout(res, 1000));
      assert.equal(await running(child.id, "sleep 0.5"), 0, "the inherited loop ended in the child too");
      assert.equal(await running(parent, "sleep 1000"), 1, "and the daemon lives in the parent");
    } finally {
      await engine.terminate(child.id);
      await sh(
        parent,
        "kill $(for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = 'sleep 1000 ' ] && basename $p; done) 2>/dev/null; true",
      );
    }
  });

  it("forks of forks keep each generation's state (three generations), each with its own boot id", async () => {
    let current = parent;
    const bootIds = new Set([await sh(parent, "cat /proc/sys/kernel/random/boot_id")]);
    for (let gen = 1; gen <= 3; gen++) {
      await sh(current, `echo gen-${gen - 1} >> /root/lineage`);
      const { children } = await engine.fork(current, { count: 1 });
      const child = children[0]!;
      assert.equal(child.parentId, current);
      assert.equal(
        await sh(child.id, "cat /root/lineage"),
        Array.from({ length: gen }, (_, i) => `gen-${i}\n`).join(""),
      );
      bootIds.add(await sh(child.id, "cat /proc/sys/kernel/random/boot_id"));
      current = child.id;
    }
    assert.equal(await sh(parent, "cat /root/lineage"), "gen-0\n");
    assert.equal(bootIds.size, 4, `parent and three generations share a boot id: ${[...bootIds].join(" ")}`);
  });

  it("fork(8): each child's private guest memory stays small and the base is counted once", async () => {
    const { children } = await engine.fork(parent, { count: 8 });
    assert.equal(children.length, 8);
    await Promise.all(children.map((c) => sh(c.id, "echo hello > /tmp/x; cat /tmp/x")));
    // The children keep running while their rows are read one by one, and a
    // guest read of a hole allocates a base page: read until one pass agrees.
    const read = () => engine.metering().sandboxes.filter((r) => children.some((c) => c.id === r.id));
    let rows = read();
    for (let i = 0; i < 20 && new Set(rows.map((r) => r.baseAllocatedBytes)).size > 1; i++) {
      await new Promise((r) => setTimeout(r, 100));
      rows = read();
    }
    assert.equal(rows.length, 8);
    for (const r of rows) {
      assert.ok(r.guestPrivateBytes < 8 * 1024 * 1024, `${r.id} has ${r.guestPrivateBytes} private guest bytes`);
      assert.ok(r.sharedBytes > 0);
    }
    assert.equal(new Set(rows.map((r) => r.baseKey)).size, 1, "all eight map one base");
    const base = rows[0]?.baseAllocatedBytes ?? 0;
    assert.ok(
      rows.every((r) => r.baseAllocatedBytes === base),
      "every child sees the same base file",
    );
    assert.equal(hostTotals(rows).sharedBytes, base, "the base is counted once");
    assert.ok(base >= Math.max(...rows.map((r) => r.sharedBytes)), "the base holds what the children map");
    // The python template's kernel (numpy, pandas, matplotlib loaded) makes about 290 MiB non-zero.
    assert.ok(base < 384 * 1024 * 1024, `the base is sparse (non-zero pages only): ${base} bytes for 512 MiB of RAM`);
    await Promise.all(children.map((c) => engine.terminate(c.id)));
  });

  it("a child whose QEMU is killed is reported failed; parent and siblings carry on", async () => {
    const { children } = await engine.fork(parent, { count: 2 });
    const [victim, sibling] = children as [(typeof children)[0], (typeof children)[0]];
    process.kill(victim.pid, "SIGKILL");
    await waitFor(() => engine.get(victim.id).state === "failed", 10_000);
    assert.throws(
      () => engine.exec(victim.id, { command: "true" }),
      (e: MitosError) => e.code === "conflict",
    );
    assert.equal(await sh(sibling.id, "echo alive"), "alive\n");
    assert.equal(await sh(parent, "echo alive"), "alive\n");
    await engine.terminate(victim.id);
    await engine.terminate(sibling.id);
  });

  it("pause, resume and deadlines", async () => {
    await engine.pause(parent);
    assert.equal(engine.get(parent).state, "paused");
    assert.throws(
      () => engine.exec(parent, { command: "true" }),
      (e: MitosError) => e.code === "conflict",
    );
    await engine.resume(parent);
    assert.equal(await sh(parent, "echo back"), "back\n");
    assert.throws(
      () => engine.setTimeout(parent, 10 ** 6),
      (e: MitosError) => e.code === "timeout_too_large",
    );

    const short = await engine.create("python", { timeoutSeconds: 2 });
    const extended = engine.setTimeout(short.id, 3);
    assert.ok(extended.deadlineUnix >= Math.floor(Date.now() / 1000) + 2);
    await waitFor(() => {
      try {
        engine.get(short.id);
        return false;
      } catch (e) {
        return (e as MitosError).code === "idle_timeout";
      }
    }, 15_000);
    assert.ok(!pidAlive(short.pid), "the reaped sandbox's QEMU is gone");
  });

  it("leaves only template bases in /dev/shm once sandboxes are gone", async () => {
    for (const s of engine.list()) await engine.terminate(s.id);
    const tpl = engine.templateRecord("python")!;
    // Besides the template: at most the file the spare QEMUs wait on, holding no memory once the
    // base copied into it ahead of the next fork is let go (its VM gone: asynchronous, decision 0026).
    const spare = engine.spareStatus().ramFile;
    await waitFor(
      () =>
        fs.readdirSync(shmDir).every((f) => [tpl.ramFile, spare].includes(path.join(shmDir, f))) &&
        (!spare || !fs.existsSync(spare) || fs.statSync(spare).blocks === 0),
      10_000,
    );
    assert.deepEqual(fs.readdirSync(path.join(dataDir, "bases")), []);
  });
});

describe("crash recovery", () => {
  for (const mode of ["timed", "hang-paused"] as const) {
    it(`an engine killed mid-fork (${mode}): the restart re-adopts the sandboxes, reaps the rest and leaves no stray file`, async () => {
      const crashShm = `/dev/shm/mitos-test-crash-${process.pid}`;
      const crashData = tempDataDir(`test-crash-${process.pid}`, crashShm);
      fs.mkdirSync(crashShm, { recursive: true });
      const script = path.join(import.meta.dirname, "fixtures", "fork-victim.ts");
      const child = spawn(process.execPath, ["--import", "tsx", script, crashData, crashShm, imagesDir, mode], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      try {
        let out = "";
        const until = mode === "timed" ? "forking" : "paused";
        await new Promise<void>((resolve, reject) => {
          child.stdout.on("data", (d: Buffer) => {
            out += d.toString();
            if (out.includes(until)) resolve();
          });
          child.on("exit", (code) => reject(new Error(`victim exited early (${code}): ${out}`)));
        });
        const source = /forking (\S+)/.exec(out)?.[1] as string;
        // Timed: let the fork get under way (capture or restores), then kill the engine.
        if (mode === "timed") await new Promise((r) => setTimeout(r, 250));
        child.kill("SIGKILL");
        await new Promise((r) => child.once("exit", r));
        assert.ok(qemuPidsOf(crashData).length > 0, "the dead engine left QEMU processes behind (test premise)");

        const restarted = await Engine.open({ dataDir: crashData, shmDir: crashShm, imagesDir, poolTargets: {} });
        try {
          // The source is back (resumed if the crash caught it paused for the
          // capture); so is any child whose fork had finished; nothing else runs.
          const live = restarted.list();
          assert.ok(
            live.some((s) => s.id === source && s.state === "ready"),
            JSON.stringify(live),
          );
          assert.deepEqual(qemuPidsOf(crashData).sort(), live.map((s) => s.pid).sort());
          for (const s of live) {
            const r = await restarted.exec(s.id, { command: "cat /root/x" }).result;
            assert.equal(r.stdout.toString(), "before-crash\n", s.id);
          }
          const tpl = restarted.templateRecord("python");
          const shmLeft = fs.readdirSync(crashShm).filter((f) => path.join(crashShm, f) !== tpl?.ramFile);
          assert.deepEqual(shmLeft, []);
          assert.equal(fs.readdirSync(path.join(crashData, "vms")).length, live.length);
          assert.deepEqual(fs.readdirSync(path.join(crashData, "bases")), []);
          // Still usable after recovery, the re-adopted source included.
          const sb = await restarted.create("python");
          const r = await restarted.exec(sb.id, { command: "echo ok" }).result;
          assert.equal(r.stdout.toString(), "ok\n");
          const { children } = await restarted.fork(source, { count: 2 });
          for (const c of children) {
            const rc = await restarted.exec(c.id, { command: "cat /root/x" }).result;
            assert.equal(rc.stdout.toString(), "before-crash\n");
          }
        } finally {
          await restarted.close({ killSandboxes: true });
        }
        assert.deepEqual(qemuPidsOf(crashData), []);
      } finally {
        child.kill("SIGKILL");
        for (const pid of qemuPidsOf(crashData)) process.kill(pid, "SIGKILL");
        removeDataDir(crashData, crashShm);
      }
    });
  }

  it("a closed engine's sandboxes keep running; the next open re-adopts them with their processes, files and state", async () => {
    const shm = `/dev/shm/mitos-test-keep-${process.pid}`;
    const data = tempDataDir(`test-keep-${process.pid}`, shm);
    fs.mkdirSync(shm, { recursive: true });
    let e = await Engine.open({ dataDir: data, shmDir: shm, imagesDir, poolTargets: {} });
    try {
      await e.createTemplate("python");
      const a = await e.create("python", { timeoutSeconds: 600, env: { GREETING: "hi" } });
      const b = await e.create("python");
      // A process that counts while no mitosd watches, and a file.
      await e.exec(a.id, {
        command:
          "echo kept > /root/f; (i=0; while true; do i=$((i+1)); echo $i > /root/n; sleep 0.2; done) >/dev/null 2>&1 &",
      }).result;
      await e.pause(b.id);
      const pidA = a.pid;
      await e.close();
      assert.ok(fs.existsSync(`/proc/${pidA}`), "close without killSandboxes leaves the VM running");

      e = await Engine.open({ dataDir: data, shmDir: shm, imagesDir, poolTargets: {} });
      const got = e.get(a.id);
      assert.equal(got.pid, pidA, "the same QEMU, not a new one");
      assert.equal(got.state, "ready");
      assert.equal(got.deadlineUnix, a.deadlineUnix, "its deadline survives");
      assert.equal(e.get(b.id).state, "paused");
      const first = Number((await e.exec(a.id, { command: "cat /root/n" }).result).stdout.toString());
      await new Promise((r) => setTimeout(r, 1000));
      const r = await e.exec(a.id, { command: 'cat /root/f; cat /root/n; echo "$GREETING"' }).result;
      const [f, n, greeting] = r.stdout.toString().trim().split("\n");
      assert.equal(f, "kept");
      assert.ok(Number(n) > first, `the background loop still runs (${first} -> ${n})`);
      assert.equal(greeting, "hi", "the sandbox's env defaults survive");
      await e.resume(b.id);
      assert.equal((await e.exec(b.id, { command: "echo resumed" }).result).stdout.toString(), "resumed\n");
      // Forks of a re-adopted sandbox work as any other.
      const { children } = await e.fork(a.id, { count: 1 });
      const rc = await e.exec(children[0]?.id as string, { command: "cat /root/f" }).result;
      assert.equal(rc.stdout.toString(), "kept\n");
    } finally {
      await e.close({ killSandboxes: true });
      for (const pid of qemuPidsOf(data)) process.kill(pid, "SIGKILL");
      removeDataDir(data, shm);
    }
  });

  it("templates survive a restart; after a reboot (RAM gone) a custom one is rebuilt from its spec at its next use", async () => {
    const shm = `/dev/shm/mitos-test-rebuild-${process.pid}`;
    const data = tempDataDir(`test-rebuild-${process.pid}`, shm);
    const spec = { image: "base", resources: { memSizeMib: 256 }, init: ["echo built-once > /workspace/mark"] };
    try {
      let e = await Engine.open({ dataDir: data, shmDir: shm, imagesDir, poolTargets: {} });
      const first = await e.createTemplate("rb", spec);
      await e.close();
      // A plain restart: the same template, not rebuilt.
      e = await Engine.open({ dataDir: data, shmDir: shm, imagesDir, poolTargets: {} });
      assert.equal(e.listTemplates().find((t) => t.id === "rb")?.createdAt, first.createdAt);
      const ram = e.templateRecord("rb")?.ramFile as string;
      await e.close();
      // A reboot empties /dev/shm.
      fs.rmSync(ram);
      e = await Engine.open({ dataDir: data, shmDir: shm, imagesDir, poolTargets: {} });
      try {
        assert.equal(e.templateRecord("rb"), undefined, "dropped at start: its RAM is gone");
        const sb = await e.create("rb");
        const r = await e.exec(sb.id, { command: "cat /workspace/mark" }).result;
        assert.equal(r.stdout.toString(), "built-once\n", "rebuilt with its init");
        assert.notEqual(e.listTemplates().find((t) => t.id === "rb")?.createdAt, first.createdAt);
        await e.terminate(sb.id);
      } finally {
        await e.close({ killSandboxes: true });
      }
    } finally {
      removeDataDir(data, shm);
    }
  });
});

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A process's autogroup niceness (the expected one where the kernel has none) and its threads' distinct niceness values. */
function priority(pid: number, expected: number): { autogroup: number; threads: number[] } {
  const file = `/proc/${pid}/autogroup`;
  const autogroup = fs.existsSync(file) ? Number(/nice (-?\d+)/.exec(fs.readFileSync(file, "utf8"))?.[1]) : expected;
  const threads = new Set<number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    threads.add(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16])); // field 19: nice
  }
  return { autogroup, threads: [...threads] };
}
