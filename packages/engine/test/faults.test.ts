// Fault injection on real microVMs: QEMU killed at each step of create, fork
// and terminate, a full RAM-file tmpfs, a guest kernel panic and a frozen
// guest. Each ends in a clear error or a recovered state, with no orphan
// QEMU and no file beyond what the journal owns.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir } from "../../../test-support/data-dir.js";
import { assertNoLeaks, killQemusOf, qemuPidsOf, waitGone } from "../../../test-support/leaks.js";
import { defaultDataDir } from "../src/config.js";
import type { FaultStep } from "../src/engine.js";
import { Engine, MitosError, type SandboxInfo, type Vm } from "../src/index.js";

const root = defaultDataDir();
const imagesDir = path.join(root, "images");
const dataDir = path.join(root, "test-faults");
// A tmpfs of its own, so the "/dev/shm full" case can shrink it without
// touching the host's /dev/shm (other VMs write there).
const shmDir = path.join(root, "test-faults-shm");
const AGENT_TIMEOUT_MS = 8000;
let engine: Engine;
let mounted = false;
let onStep: ((step: FaultStep, vm: Vm) => Promise<void>) | undefined;

const owned = { dataDir, shmDir };

/** Kills the VM's QEMU and waits until the engine has seen it exit. */
async function killVm(vm: Vm): Promise<void> {
  process.kill(vm.pid, "SIGKILL");
  await vm.exited;
}

/** Injects `fault` at the first `n` occurrences of `step`. */
function at(step: FaultStep, fault: (vm: Vm) => Promise<void>, n = 1): void {
  let left = n;
  onStep = async (s, vm) => {
    if (s !== step || left <= 0) return;
    left--;
    await fault(vm);
  };
}

const isCode =
  (...codes: string[]) =>
  (e: unknown) => {
    assert.ok(e instanceof MitosError, `not a MitosError: ${e}`);
    assert.ok(codes.includes(e.code), `code ${e.code} (${e.message}) not in ${codes}`);
    assert.ok(e.remediation.length > 10, "has a remediation");
    return true;
  };

const sh = async (id: string, command: string) => {
  const r = await engine.exec(id, { command }).result;
  assert.equal(r.exitCode, 0, `${command}: ${r.stderr.toString()}`);
  return r.stdout.toString();
};

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const state = (id: string) => engine.get(id).state;

/** Terminates everything but `keep` and checks nothing is left beyond the journal. */
async function settle(...keep: string[]): Promise<void> {
  onStep = undefined;
  for (const s of engine.list()) if (!keep.includes(s.id)) await engine.terminate(s.id);
  await assertNoLeaks(owned);
}

before(async () => {
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.mkdirSync(shmDir, { recursive: true });
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=3g,mode=0700", "mitos-test-faults", shmDir], { stdio: "pipe" });
    mounted = true;
  } catch {
    // Not root or no mount namespace: the shm-full case is skipped.
  }
  engine = await Engine.open({
    dataDir,
    shmDir,
    imagesDir,
    poolTargets: { python: 1 },
    agentTimeoutMs: AGENT_TIMEOUT_MS,
    faults: (step, vm) => onStep?.(step, vm),
  });
  await engine.createTemplate("python");
});

after(async () => {
  onStep = undefined;
  await engine?.close({ killSandboxes: true });
  killQemusOf(dataDir);
  if (mounted) execFileSync("umount", ["-l", shmDir]);
  removeDataDir(dataDir, shmDir);
});

describe("QEMU killed during create", () => {
  for (const step of ["create:restored", "create:activated"] as const) {
    it(`at ${step}: create fails cleanly and the next one works`, async () => {
      at(step, killVm);
      await assert.rejects(engine.create("python"), isCode("unavailable", "internal"));
      assert.deepEqual(engine.list(), []);
      await settle();
      const sb = await engine.create("python");
      assert.equal(await sh(sb.id, "echo ok"), "ok\n");
      await settle();
    });
  }
});

describe("QEMU killed while warm in the pool", () => {
  it("a dead warm VM is never handed out and its record goes", async () => {
    await waitFor(() => engine.poolStatus().some((p) => p.warm === 1), 60_000);
    const [warm] = qemuPidsOf(dataDir);
    assert.ok(warm, "the pool holds one VM");
    process.kill(warm, "SIGKILL");
    await waitGone(warm);
    const sb = await engine.create("python");
    assert.notEqual(sb.pid, warm);
    assert.equal(await sh(sb.id, "echo ok"), "ok\n");
    await settle();
  });
});

describe("QEMU killed during fork", () => {
  let source: SandboxInfo;
  before(async () => {
    source = await engine.create("python");
    await sh(source.id, "echo kept > /root/mark");
  });

  it("a child killed before activation: the other children are returned", async () => {
    at("fork:child-restored", killVm);
    const { children } = await engine.fork(source.id, { count: 3 });
    assert.equal(children.length, 2);
    for (const c of children) assert.equal(await sh(c.id, "cat /root/mark"), "kept\n");
    assert.equal(await sh(source.id, "cat /root/mark"), "kept\n");
    await settle(source.id);
  });

  it("every child killed: fork_failed, the source unchanged", async () => {
    at("fork:child-restored", killVm, 2);
    await assert.rejects(engine.fork(source.id, { count: 2 }), isCode("fork_failed"));
    assert.deepEqual(
      engine.list().map((s) => s.id),
      [source.id],
    );
    assert.equal(state(source.id), "ready");
    assert.equal(await sh(source.id, "cat /root/mark"), "kept\n");
    await settle(source.id);
  });

  it("the source killed after capture: the children still come up, the source is failed", async () => {
    at("fork:captured", killVm);
    const { children } = await engine.fork(source.id, { count: 2 });
    assert.equal(children.length, 2);
    for (const c of children) assert.equal(await sh(c.id, "cat /root/mark"), "kept\n");
    assert.equal(state(source.id), "failed");
    await settle();
    source = await engine.create("python");
    await sh(source.id, "echo kept > /root/mark");
  });

  it("the source killed while paused: fork_failed naming the source, no child made", async () => {
    at("fork:paused", killVm);
    await assert.rejects(engine.fork(source.id, { count: 2 }), (e) => {
      isCode("fork_failed")(e);
      assert.match((e as Error).message, /source sandbox .* exited during the fork/);
      return true;
    });
    assert.equal(state(source.id), "failed");
    assert.deepEqual(
      engine.list().map((s) => s.id),
      [source.id],
    );
    assert.throws(() => engine.exec(source.id, { command: "true" }), isCode("conflict"));
    await settle();
  });
});

describe("QEMU killed while waiting as a spare", () => {
  it("the dead spare's runtime dir goes, and the next fork still works", async () => {
    const source = await engine.create("python");
    await sh(source.id, "echo kept > /root/mark");
    await engine.fork(source.id, { count: 1 }); // primes spares for this machine
    await waitFor(() => engine.spareStatus().ready > 0, 60_000);
    const [spare] = engine.spareStatus().pids;
    assert.ok(spare, "a spare waits");
    process.kill(spare, "SIGKILL");
    await waitGone(spare);
    await waitFor(() => !engine.spareStatus().pids.includes(spare), 5000);
    await assertNoLeaks(owned);
    const { children } = await engine.fork(source.id, { count: 2 });
    for (const c of children) assert.equal(await sh(c.id, "cat /root/mark"), "kept\n");
    await settle();
  });
});

describe("faults around checkpoints", () => {
  it("the source killed while paused for a checkpoint: fork_failed naming it, nothing listed, nothing left", async () => {
    const sb = await engine.create("python");
    at("checkpoint:paused", killVm);
    await assert.rejects(engine.checkpoint(sb.id), (e) => {
      isCode("fork_failed")(e);
      assert.match((e as Error).message, /source sandbox .* exited during the checkpoint/);
      return true;
    });
    assert.deepEqual(engine.checkpoints.list(), []);
    assert.equal(engine.checkpoints.usedBytes(), 0);
    await settle();
  });

  it("the source killed right after the capture: the checkpoint is whole and restores", async () => {
    const sb = await engine.create("python");
    await sh(sb.id, "echo before-the-kill > /workspace/k.txt");
    at("checkpoint:captured", killVm);
    const cp = await engine.checkpoint(sb.id);
    assert.equal(state(sb.id), "failed");
    const { children } = await engine.fromCheckpoint(cp.id);
    assert.equal(await sh(children[0]?.id as string, "cat /workspace/k.txt"), "before-the-kill\n");
    engine.deleteCheckpoint(cp.id);
    await settle();
  });

  it("a corrupt chunk is caught by its hash: no sandbox is made and nothing is left", async () => {
    const sb = await engine.create("python");
    const cp = await engine.checkpoint(sb.id);
    await engine.terminate(sb.id);
    // Overwrite one RAM chunk with another valid zstd frame (the device state's): only the hash tells.
    const chunk = (h: string) => path.join(engine.checkpoints.dir, "chunks", h.slice(0, 2), `${h}.zst`);
    const [, victim] = cp.ram[Math.floor(cp.ram.length / 2)] as [number, string];
    fs.copyFileSync(chunk(cp.state), chunk(victim));
    await assert.rejects(engine.fromCheckpoint(cp.id, { count: 2 }), (e) => {
      isCode("internal")(e);
      assert.match((e as Error).message, /corrupt chunk/);
      return true;
    });
    assert.deepEqual(engine.list(), []);
    await settle();
    engine.deleteCheckpoint(cp.id);
    assert.equal(engine.checkpoints.usedBytes(), 0);
  });
});

describe("QEMU killed around terminate and while idle", () => {
  it("terminate of a VM that just died succeeds and leaves nothing", async () => {
    const sb = await engine.create("python");
    at("terminate:before-kill", killVm);
    await engine.terminate(sb.id);
    assert.throws(() => engine.get(sb.id), isCode("not_found"));
    await settle();
  });

  it("an idle sandbox whose QEMU is killed goes to failed; its sockets go at once, the rest at terminate", async () => {
    const sb = await engine.create("python");
    const vmDir = /-qmp\0unix:(.*)\/qmp\.sock/.exec(fs.readFileSync(`/proc/${sb.pid}/cmdline`, "utf8"))?.[1] ?? "";
    assert.ok(fs.existsSync(path.join(vmDir, "qmp.sock")));
    process.kill(sb.pid, "SIGKILL");
    await waitFor(() => state(sb.id) === "failed", 10_000);
    await waitFor(() => !fs.readdirSync(vmDir).some((f) => f.endsWith(".sock")), 5000);
    assert.ok(fs.existsSync(path.join(vmDir, "console.log")), "the console log stays for diagnosis");
    await settle();
  });
});

describe("guest faults", () => {
  it("a guest kernel panic: the exec fails clearly, the sandbox is failed, a sibling is unaffected", async () => {
    const [victim, bystander] = [await engine.create("python"), await engine.create("python")];
    const t0 = Date.now();
    await assert.rejects(
      engine.exec(victim.id, { command: "echo c > /proc/sysrq-trigger; sleep 60" }).result,
      isCode("unavailable"),
    );
    assert.ok(Date.now() - t0 < 30_000, "the exec ended when QEMU exited");
    await waitFor(() => state(victim.id) === "failed", 10_000);
    assert.equal(await sh(bystander.id, "echo alive"), "alive\n");
    await settle();
  });

  it("a frozen guest (QEMU stopped): exec and file calls end with a clear error; it recovers when thawed; terminate of a frozen VM cleans up", async () => {
    const sb = await engine.create("python");
    process.kill(sb.pid, "SIGSTOP");
    try {
      const t0 = Date.now();
      const exec = engine.exec(sb.id, { command: "sleep 1000" }).result;
      const read = engine.agent(sb.id).readFile("/etc/hostname");
      const write = engine.agent(sb.id).writeFile("/root/big", Buffer.alloc(8 << 20, 1));
      for (const p of [exec, read, write]) await assert.rejects(p, isCode("unavailable"));
      const took = Date.now() - t0;
      assert.ok(took < AGENT_TIMEOUT_MS + 8000, `gave up after ${took} ms`);
      assert.equal(state(sb.id), "ready", "a slow guest is not declared dead");
    } finally {
      process.kill(sb.pid, "SIGCONT");
    }
    // Thawed: the same connection works, and the abandoned command was killed.
    assert.equal(await sh(sb.id, "echo back"), "back\n");
    let left = 1;
    for (let i = 0; i < 50 && left > 0; i++) {
      left = (await engine.agent(sb.id).processes()).filter((p) => p.command.includes("sleep 1000")).length;
      if (left > 0) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(left, 0, "the abandoned exec was killed in the guest");
    process.kill(sb.pid, "SIGSTOP");
    await engine.terminate(sb.id);
    await settle();
  });
});

describe("RAM-file tmpfs full", () => {
  it("a fork (or template build) without room fails naming the dir; the source is unchanged", async (t) => {
    if (!mounted) return t.skip("cannot mount a tmpfs here (needs root)");
    const source = await engine.create("python");
    await sh(source.id, "echo kept > /root/mark");
    const used = () => {
      const s = fs.statfsSync(shmDir);
      return (s.blocks - s.bfree) * s.bsize;
    };
    // Room for a few MiB, not for the source's RAM.
    const tight = Math.ceil(used() / 1024) + 4096;
    execFileSync("mount", ["-o", `remount,size=${tight}k`, shmDir]);
    try {
      await assert.rejects(engine.fork(source.id, { count: 2 }), (e) => {
        isCode("fork_failed")(e);
        assert.ok((e as MitosError).remediation.includes(shmDir), (e as MitosError).remediation);
        return true;
      });
      assert.equal(state(source.id), "ready");
      assert.equal(await sh(source.id, "cat /root/mark"), "kept\n");
      // A template build is refused up front rather than killed by SIGBUS half way.
      await assert.rejects(engine.createTemplate("tight", { image: "base" }), (e) => {
        isCode("unavailable")(e);
        assert.ok((e as MitosError).remediation.includes(shmDir), (e as MitosError).remediation);
        return true;
      });
      await assertNoLeaks(owned);
    } finally {
      execFileSync("mount", ["-o", "remount,size=3g", shmDir]);
    }
    const { children } = await engine.fork(source.id, { count: 1 });
    assert.equal(await sh(children[0]?.id ?? "", "cat /root/mark"), "kept\n");
    await settle();
  });
});
