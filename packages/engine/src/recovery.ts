// What a starting engine does with what a previous run left
// (docs/decisions/0012-restarts-keep-sandboxes.md): sandboxes whose QEMU is
// still running are re-adopted (new QMP client, agent session resynced) with
// their ids, deadlines and state; hibernated sandboxes come back as they
// were; every other VM (warm pool, spares, template builds, anything that
// cannot be proven ours) is reaped, and stray files are removed.

import fs from "node:fs";
import path from "node:path";
import type { EngineContext } from "./context.js";
import { ensureImages } from "./image/build.js";
import type { SandboxRecord, VmRecord } from "./journal.js";
import type { Sandbox, SandboxTable } from "./lifecycle.js";
import { DEFAULT_POLICY } from "./network/policy.js";
import { qemuPidsOf } from "./qemu/processes.js";
import type { Templates } from "./templates.js";
import { processStartTime, Vm } from "./vm.js";

export async function recover(ctx: EngineContext, templates: Templates, table: SandboxTable): Promise<void> {
  const { journal, log } = ctx;
  const records = new Map(Object.values(journal.sandboxes).map((r) => [r.id, r]));
  const adoptedPids = new Set<number>();
  const keptDirs = new Set<string>();
  for (const v of Object.values(journal.vms)) {
    const rec = v.sandboxId ? records.get(v.sandboxId) : undefined;
    if (rec && rec.vmId === v.vmId) {
      const s = await readopt(ctx, v, rec).catch((err: Error) => {
        log("could not re-adopt a sandbox's VM; it is stopped", { sandbox: rec.id, vm: v.vmId, error: err.message });
        return undefined;
      });
      if (s?.vm) {
        table.restore(s);
        records.delete(rec.id);
        adoptedPids.add(s.vm.pid);
        keptDirs.add(v.dir);
        log("re-adopted sandbox left running by a previous run", {
          sandbox: s.id,
          vm: v.vmId,
          pid: v.pid,
          state: s.state,
        });
        continue;
      }
    }
    await reap(v.pid, v.dir);
    fs.rmSync(v.dir, { recursive: true, force: true });
    for (const f of v.files) fs.rmSync(f, { force: true });
    journal.deleteVm(v.vmId);
    log("reaped VM left by a previous run", {
      vm: v.vmId,
      pid: v.pid,
      ...(v.sandboxId ? { sandbox: v.sandboxId } : {}),
    });
  }
  // From now on an adopted VM's gid is freed when its last VM exits.
  ctx.confinement.endAdoption();
  // Network slots of VMs that were not re-adopted (their namespaces, veths, rules).
  await ctx.network.reclaim(new Set());
  // QEMUs started but not yet journaled when the previous run died (a
  // restore in flight): found by their runtime paths under <dataDir>/vms/.
  for (const pid of qemuPidsOf(ctx.dataDir)) {
    if (adoptedPids.has(pid)) continue;
    await reap(pid);
    log("reaped unjournaled QEMU left by a previous run", { pid });
  }
  // Sandboxes without a live VM: hibernated ones come back; the rest are lost.
  const hibernations = new Set<string>();
  for (const rec of records.values()) {
    if (rec.hibernation && ctx.checkpoints.list().some((c) => c.id === rec.hibernation)) {
      table.restore(sandboxOf(rec, undefined));
      hibernations.add(rec.hibernation);
      log("restored hibernated sandbox", { sandbox: rec.id, checkpoint: rec.hibernation });
      continue;
    }
    journal.deleteSandbox(rec.id);
    log("sandbox lost: its VM did not survive (host reboot or QEMU exit while mitosd was down)", {
      sandbox: rec.id,
      ...(rec.vmId ? { vm: rec.vmId } : {}),
    });
  }
  for (const t of Object.values(journal.templates)) {
    let reason: string | undefined;
    if (!fs.existsSync(t.ramFile) || !fs.existsSync(t.stateFile)) reason = "its files are gone";
    else {
      // A template frozen with an older agent, kernel or root image is stale.
      const current = await ensureImages({ packages: t.recipe.packages }, { cacheDir: ctx.imagesDir });
      const was = t.machine.images;
      if (current.kernel !== was.kernel || current.initrd !== was.initrd || current.rootfs !== was.rootfs) {
        reason = "its guest images changed";
      }
    }
    if (reason) {
      // Re-adopted sandboxes of it keep running: they map its RAM already.
      if (t.spec) journal.putRecipe(t.id, t.spec, t.owner);
      templates.remove(t);
      log(`dropped template: ${reason}`, {
        template: t.id,
        ...(t.spec ? { rebuild: "at its next use, from its recorded spec" } : {}),
      });
    }
  }
  // A hidden checkpoint no surviving hibernated sandbox names is an interrupted hibernation or wake.
  for (const c of ctx.checkpoints.list()) {
    if (c.hidden && !hibernations.has(c.id)) {
      ctx.checkpoints.delete(c.id);
      log("dropped the checkpoint of a hibernation no sandbox names", { checkpoint: c.id });
    }
  }
  // Template bases get a group of this run (ids are not kept across runs; adopted VMs keep theirs).
  for (const t of Object.values(journal.templates)) templates.group(t);
  // Disk layers no template or adopted VM names (a crash mid-fork, a dropped template).
  for (const f of ctx.disks.sweep()) log("removed a disk layer no sandbox or template uses", { file: f });
  // Stray files of ours not named by the journal (a crash between creating
  // and journaling). Unlinking a RAM file an adopted VM maps is safe: its
  // pages live while it maps them.
  const known = new Set(Object.values(journal.templates).flatMap((t) => [t.ramFile, t.stateFile]));
  for (const f of fs.readdirSync(ctx.shmDir)) {
    const p = path.join(ctx.shmDir, f);
    if (/^mitos-.*\.ram$/.test(f) && !known.has(p)) fs.rmSync(p, { force: true });
  }
  for (const d of ["vms", "bases"]) {
    for (const f of fs.readdirSync(path.join(ctx.dataDir, d))) {
      const p = path.join(ctx.dataDir, d, f);
      if (!keptDirs.has(p)) fs.rmSync(p, { recursive: true, force: true });
    }
  }
}

/** Attaches to a sandbox's QEMU if it is provably the one the journal names (pid and start time). */
async function readopt(ctx: EngineContext, v: VmRecord, rec: SandboxRecord): Promise<Sandbox | undefined> {
  if (v.startTime === undefined || !v.machine) return undefined; // journaled by a release that could not re-adopt
  if (processStartTime(v.pid) !== v.startTime || !isOurQemu(v.pid, v.dir)) return undefined;
  // Confinement must match: a VM journaled without ids under a root mitosd (or the reverse) is not adopted.
  if (ctx.confinement.uids !== (v.uid !== undefined && v.gid !== undefined)) return undefined;
  const runAs =
    v.uid !== undefined && v.gid !== undefined ? ctx.confinement.adoptRunAs(v.uid, v.gid, v.machine.accel) : undefined;
  const vm = await Vm.attach({
    id: v.vmId,
    dataDir: ctx.dataDir,
    machine: v.machine,
    pid: v.pid,
    startTime: v.startTime,
    ...(runAs ? { runAs } : {}),
    ...(v.disk ? { disk: v.disk } : {}),
    ...ctx.agentOpts,
  });
  if (v.machine.network) {
    const index = [...ctx.network.claims()].find(([, vmId]) => vmId === v.vmId)?.[0];
    const kept = index !== undefined && (await ctx.network.adopt(vm.id, index, rec.network ?? DEFAULT_POLICY));
    if (!kept) {
      await vm.destroy();
      throw new Error("its network slot is gone");
    }
    vm.exited.then(() => ctx.network.detach(vm.id)).catch(() => {});
  }
  if (v.disk) {
    // Its layers stay while it runs; the frozen ones get groups of this run
    // (the VM has them open; children of its next fork must open them too).
    ctx.disks.hold(vm.id, v.disk);
    vm.exited.then(() => ctx.disks.release(vm.id)).catch(() => {});
    for (const layer of v.disk.slice(1)) {
      const group = ctx.confinement.group();
      ctx.disks.freeze(layer, group);
      group?.release();
    }
  }
  let state = rec.state;
  if (vm.statusAtAttach === "running") state = "ready";
  else if (state === "ready") {
    // The previous run died mid-capture (fork or checkpoint): the source was
    // paused only for it, so it runs again; a half-done migration is cancelled.
    await vm.qmp.execute("migrate_cancel").catch(() => {});
    await vm.resume();
  }
  // Files journaled with it (a fork base in flight) died with that fork.
  for (const f of v.files) fs.rmSync(f, { force: true });
  ctx.journal.vmFiles(v.vmId, v.files, false);
  return sandboxOf({ ...rec, state }, vm);
}

function sandboxOf(rec: SandboxRecord, vm: Vm | undefined): Sandbox {
  return {
    id: rec.id,
    templateId: rec.templateId,
    parentId: rec.parentId,
    state: rec.state,
    vm,
    createdAt: new Date(rec.createdAt),
    deadline: rec.deadline,
    timer: undefined,
    forkTimeMs: rec.forkTimeMs,
    env: rec.env,
    memMiB: rec.memMiB,
    ...(rec.network ? { network: rec.network } : {}),
    ...(rec.owner !== undefined ? { owner: rec.owner } : {}),
    ...(rec.hibernation && !vm ? { hibernation: rec.hibernation } : {}),
    ...(rec.idleHibernated && !vm ? { idleHibernated: true } : {}),
    lastActive: Date.now(),
    streams: 0,
  };
}

/** Kills a process a previous run left, if it is still the one meant (a QEMU naming `dir`, when given). */
async function reap(pid: number, dir?: string): Promise<void> {
  if (dir !== undefined && !isOurQemu(pid, dir)) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
  const until = Date.now() + 5000;
  while (Date.now() < until && processStartTime(pid) !== undefined) await new Promise((r) => setTimeout(r, 20));
}

function isOurQemu(pid: number, dir: string): boolean {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return cmd.includes("qemu-system") && cmd.includes(dir);
  } catch {
    return false;
  }
}
