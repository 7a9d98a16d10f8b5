// End to end: a real QEMU microVM of template `python`, its guest agent, and
// the host client. One VM is booted for the whole file (TCG is slow).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { failedLogsDir } from "../src/failed-logs.js";
import {
  AgentGoneError,
  BUILTIN_RECIPES,
  defaultDataDir,
  defaultShmDir,
  ensureImages,
  type MitosError,
  Vm,
} from "../src/index.js";
import { saveState } from "../src/snapshot.js";

const dataDir = defaultDataDir();
const imagesDir = path.join(dataDir, "images");
let vm: Vm;

before(async () => {
  const images = await ensureImages(BUILTIN_RECIPES.python!, { cacheDir: imagesDir });
  vm = await Vm.boot({
    id: `test-vm-${process.pid}`,
    images,
    dataDir,
    shmDir: defaultShmDir(),
    timeoutMs: 120_000,
  });
});

after(async () => {
  await vm?.destroy();
});

describe("a booted python VM", () => {
  it("reports the accelerator it chose and its agent", () => {
    assert.ok(vm.accel === "tcg" || vm.accel === "kvm");
    assert.match(vm.info.version, /^\d+\.\d+\.\d+/);
    assert.ok(vm.info.memTotal > 100 * 1024 * 1024);
  });

  it("runs python3 and returns its output and exit code", async () => {
    const r = await vm.agent.exec({ command: "python3 -c 'print(6*7)'" }).result;
    assert.equal(r.stdout.toString(), "42\n");
    assert.equal(r.exitCode, 0);
    assert.equal(r.timedOut, false);
  });

  it("keeps stderr and stdout apart and returns the exit code", async () => {
    const r = await vm.agent.exec({ command: "echo out; echo err >&2; exit 7" }).result;
    assert.equal(r.stdout.toString(), "out\n");
    assert.equal(r.stderr.toString(), "err\n");
    assert.equal(r.exitCode, 7);
  });

  it("runs argv directly, with env and cwd", async () => {
    const r = await vm.agent.exec({ args: ["sh", "-c", 'echo "$FOO $(pwd)"'], env: { FOO: "bar" }, cwd: "/tmp" })
      .result;
    assert.equal(r.stdout.toString(), "bar /tmp\n");
    // A program that does not exist is refused with the guest's ENOENT.
    await assert.rejects(
      vm.agent.exec({ args: ["/no/such/binary"] }).result,
      (e: MitosError) => e.code === "not_found",
    );
  });

  it("kills a command at its timeout with exit 124 and leaves no process behind", async () => {
    const r = await vm.agent.exec({ command: "sleep 300 & sleep 301; echo never", timeoutMs: 1500 }).result;
    assert.equal(r.exitCode, 124);
    assert.equal(r.timedOut, true);
    assert.equal(r.stdout.toString(), "");
    const left = (await vm.agent.processes()).filter((p) => /sleep/.test(p.command));
    assert.deepEqual(left, []);
  });

  it("reuses an empty exec cgroup with its limits, never one a command's leftover process holds", async () => {
    const where = async (command: string) => {
      const r = await vm.agent.exec({ command }).result;
      assert.equal(r.exitCode, 0, r.stderr.toString());
      return r.stdout.toString().trim().split("\n");
    };
    const show = "g=$(cut -d: -f3 /proc/self/cgroup); echo $g; cat /sys/fs/cgroup$g/pids.max";
    const [first, limit] = await where(show);
    assert.match(first ?? "", /^\/mitos\/exec-\d+$/);
    assert.match(limit ?? "", /^\d+$/, "a per-exec pids limit is set");
    assert.deepEqual(await where(show), [first, limit], "the next command gets the emptied cgroup, limits intact");
    const [held] = await where(`sleep 60 >/dev/null 2>&1 & ${show}`);
    try {
      const [next] = await where(show);
      assert.notEqual(next, held, "the cgroup the background sleep still holds is not handed out");
    } finally {
      await where("pkill -x sleep; true");
    }
    // Each started in its cgroup (clone3 with CLONE_INTO_CGROUP), not moved there: the agent logs a fallback.
    assert.doesNotMatch(fs.readFileSync(vm.paths.consoleLog, "utf8"), /clone3/);
  });

  it("feeds stdin to the command", async () => {
    const h = vm.agent.exec({ command: "tr a-z A-Z", stdin: true });
    await h.write("hello stdin\n");
    h.closeStdin();
    const r = await h.result;
    assert.equal(r.stdout.toString(), "HELLO STDIN\n");
  });

  it("streams output before the command ends", async () => {
    const seen: number[] = [];
    const started = Date.now();
    const r = await vm.agent.exec({
      command: "echo first; sleep 1; echo second",
      onStdout: () => {
        seen.push(Date.now() - started);
      },
    }).result;
    assert.equal(r.stdout.toString(), "first\nsecond\n");
    assert.ok(seen.length >= 2, `expected two chunks, got ${seen.length}`);
    assert.ok(seen[0]! < r.durationMs + 1000 && seen[1]! - seen[0]! >= 500, `chunks at ${seen.join(", ")} ms`);
  });

  it("runs 10 commands at once, each with its own output", async () => {
    const runs = await Promise.all(
      Array.from({ length: 10 }, (_, i) => vm.agent.exec({ command: `sleep 0.$((RANDOM % 5)); echo job-${i}` }).result),
    );
    runs.forEach((r, i) => {
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout.toString(), `job-${i}\n`);
    });
  });

  it("writes and reads back a 5 MiB binary file byte for byte", async () => {
    const data = randomBytes(5 * 1024 * 1024);
    const n = await vm.agent.writeFile("/root/blob.bin", data, { mode: 0o600 });
    assert.equal(n, data.length);
    const back = await vm.agent.readFile("/root/blob.bin");
    assert.equal(back.length, data.length);
    assert.ok(back.equals(data));
    const sum = await vm.agent.exec({ command: "sha256sum /root/blob.bin | cut -d' ' -f1" }).result;
    const { createHash } = await import("node:crypto");
    assert.equal(sum.stdout.toString().trim(), createHash("sha256").update(data).digest("hex"));
  });

  it("lists, stats, makes, renames and removes files", async () => {
    await vm.agent.mkdir("/tmp/a/b/c");
    await vm.agent.mkdir("/tmp/a/b/c"); // mkdir -p: existing is fine
    await vm.agent.writeFile("/tmp/a/b/c/f.txt", "hello");
    const st = await vm.agent.stat("/tmp/a/b/c/f.txt");
    assert.equal(st.type, "file");
    assert.equal(st.size, 5);
    assert.equal(st.name, "f.txt");
    assert.ok(Math.abs(st.mtime - Date.now() / 1000) < 120);
    assert.equal((await vm.agent.stat("/tmp/a/b")).type, "dir");
    const names = (await vm.agent.list("/tmp/a/b")).map((e) => `${e.name}:${e.type}`);
    assert.deepEqual(names, ["c:dir"]);
    await vm.agent.rename("/tmp/a/b/c/f.txt", "/tmp/a/g.txt");
    assert.equal((await vm.agent.readFile("/tmp/a/g.txt")).toString(), "hello");
    await assert.rejects(vm.agent.remove("/tmp/a"), (e: MitosError) => e.code === "conflict");
    await vm.agent.remove("/tmp/a", true);
    await assert.rejects(vm.agent.stat("/tmp/a"), (e: MitosError) => e.code === "not_found");
  });

  it("reports a missing file as not_found with a remediation", async () => {
    await assert.rejects(vm.agent.readFile("/no/such/file"), (e: MitosError) => {
      assert.equal(e.code, "not_found");
      assert.match(e.message, /\/no\/such\/file/);
      assert.ok(e.remediation.length > 10);
      return true;
    });
  });

  it("runs a PTY session with resize", async () => {
    let screen = "";
    const h = vm.agent.exec({
      command: "sh",
      pty: { cols: 80, rows: 24 },
      stdin: true,
      onStdout: (c) => {
        screen += c.toString();
      },
    });
    await h.started;
    h.resize(100, 40);
    await h.write("stty size; echo hi-$((40+2))\n");
    await waitFor(() => screen.includes("hi-42"), 10_000);
    assert.match(screen, /40 100/);
    await h.write("exit 3\n");
    const r = await h.result;
    assert.equal(r.exitCode, 3);
  });

  it("defaults: cwd /workspace (writable), WriteFile makes parents, a PTY without a command is a bash login shell", async () => {
    const pwd = await vm.agent.exec({ command: "pwd; touch w.txt && echo ok" }).result;
    assert.equal(pwd.stdout.toString(), "/workspace\nok\n");
    await vm.agent.writeFile("/workspace/deep/er/plan.txt", "plan");
    assert.equal((await vm.agent.readFile("/workspace/deep/er/plan.txt")).toString(), "plan");
    assert.equal((await vm.agent.stat("/workspace/deep/er")).mode & 0o777, 0o755);
    let screen = "";
    const h = vm.agent.exec({
      pty: { cols: 80, rows: 24 },
      stdin: true,
      onStdout: (c) => {
        screen += c.toString();
      },
    });
    await h.started;
    await h.write('echo "sh=$0 login=$(shopt -q login_shell && echo y) cwd=$PWD"\n');
    await waitFor(() => /sh=\S+ login=y cwd=\/workspace/.test(screen), 10_000);
    assert.match(screen, /sh=-?\/?(usr\/)?(bin\/)?bash login=y/);
    await h.write("exit 0\n");
    assert.equal((await h.result).exitCode, 0);
  });

  it("reports each process's CPU use as ps does", async () => {
    const h = vm.agent.exec({ command: "while :; do :; done", timeoutMs: 20_000 });
    await h.started;
    await new Promise((r) => setTimeout(r, 1500));
    const busy = (await vm.agent.processes()).find((p) => p.command.includes("while :"));
    h.signal(9);
    await h.result;
    assert.ok(busy, "the busy loop is listed");
    // Clock-tick granularity (10 ms) over a 1.5 s life lets one busy CPU read a little above 100.
    assert.ok(busy.cpuPercent > 20 && busy.cpuPercent < 120, `cpu ${busy.cpuPercent}%`);
  });

  it("fork-notify confirms the reseed, steps the clock, renames the guest and signals registered processes", async () => {
    await vm.agent.exec({ command: "date -s @1000000000 >/dev/null" }).result;
    // A process that asked to be told about forks (SIGUSR2).
    await vm.agent.exec({
      command:
        "sh -c 'trap \"echo got-usr2 > /tmp/usr2\" USR2; touch /run/mitos/notify/$$; while :; do sleep 0.2; done' >/dev/null 2>&1 &",
    }).result;
    await waitFor(async () => (await vm.agent.list("/run/mitos/notify")).length > 0, 10_000);
    const before = await vm.agent.readFile("/proc/sys/kernel/random/uuid");
    const r = await vm.agent.forkNotify({ sandboxId: "sb-child01", hostname: "sb-child01" });
    assert.equal(r.reseeded, true);
    assert.ok(r.notified >= 1);
    assert.ok(r.clockStepNs > 10n ** 9n * 60n * 60n * 24n * 365n, "clock stepped forward by years");
    const now = await vm.agent.exec({ command: "date +%s.%N; hostname; cat /run/mitos/sandbox-id" }).result;
    const [guestTime, hostname, sandboxId] = now.stdout.toString().trim().split("\n");
    assert.ok(Math.abs(Number(guestTime) - Date.now() / 1000) < 1.5, `guest clock ${guestTime}`);
    assert.equal(hostname, "sb-child01");
    assert.equal(sandboxId, "sb-child01");
    await waitFor(
      async () => (await vm.agent.exec({ command: "cat /tmp/usr2" }).result).stdout.toString() === "got-usr2\n",
      5000,
    );
    const afterUuid = await vm.agent.readFile("/proc/sys/kernel/random/uuid");
    assert.notEqual(afterUuid.toString(), before.toString());
  });

  it("activate signals registered processes once per copy of the memory; a second notice (a warm VM's claim) only renames", async () => {
    // The process registered by the test above is still alive and registered.
    const usr2 = async () => (await vm.agent.exec({ command: "cat /tmp/usr2 2>/dev/null" }).result).stdout.toString();
    await vm.agent.exec({ command: "rm -f /tmp/usr2" }).result;
    await vm.activate("sb-warm0001");
    await waitFor(async () => (await usr2()) === "got-usr2\n", 5000);
    await vm.agent.exec({ command: "rm -f /tmp/usr2" }).result;
    const bootBefore = (await vm.agent.hello()).bootId;
    await vm.activate("sb-claim001");
    const names = await vm.agent.exec({ command: "hostname; cat /run/mitos/sandbox-id" }).result;
    assert.deepEqual(names.stdout.toString().trim().split("\n"), ["sb-claim001", "sb-claim001"]);
    assert.notEqual((await vm.agent.hello()).bootId, bootBefore, "a claim still gives a boot id of its own");
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await usr2(), "", "no SIGUSR2 on the second notice");
    // SIGNAL 0 is the host's choice, per notice: the next plain notice signals again.
    const r = await vm.agent.forkNotify({ sandboxId: "sb-claim001", hostname: "sb-claim001" });
    assert.ok(r.notified >= 1);
    await waitFor(async () => (await usr2()) === "got-usr2\n", 5000);
  });

  it("caches the image build: a second build reuses the files in under 2 s", async () => {
    const steps: string[] = [];
    const started = Date.now();
    const again = await ensureImages(BUILTIN_RECIPES.python!, {
      cacheDir: imagesDir,
      onProgress: (p) => steps.push(p.step),
    });
    const ms = Date.now() - started;
    assert.ok(ms < 2000, `cached build took ${ms} ms`);
    assert.deepEqual(steps, ["cached", "cached", "cached"]);
    assert.equal(again.rootfs, (await ensureImages(BUILTIN_RECIPES.python!, { cacheDir: imagesDir })).rootfs);
  });
});

/** A throwaway VM of the base image, for tests that kill it. */
async function bootBase(name: string, pit?: boolean): Promise<Vm> {
  const images = await ensureImages(BUILTIN_RECIPES.base!, { cacheDir: imagesDir });
  return Vm.boot({
    id: `test-${name}-${process.pid}`,
    images,
    dataDir,
    shmDir: defaultShmDir(),
    timeoutMs: 120_000,
    // Kept: the PIT test snapshots it, as a template build does.
    ...(pit !== undefined ? { pit, keepRamFile: true } : {}),
  });
}

const qtree = async (v: Vm) => String(await v.qmp.execute("human-monitor-command", { "command-line": "info qtree" }));

describe("QEMU's PIT (decision 0034)", () => {
  it("a TCG VM boots without it and keeps time on the TSC and the local APIC", async () => {
    assert.equal(vm.machine.pit, vm.machine.accel === "tcg" ? false : undefined);
    const cmd = fs.readFileSync(`/proc/${vm.pid}/cmdline`, "utf8").split("\0");
    assert.equal(cmd[cmd.indexOf("-M") + 1], vm.machine.pit === false ? "microvm,acpi=on,pit=off" : "microvm,acpi=on");
    if (vm.machine.pit === false) assert.doesNotMatch(await qtree(vm), /isa-pit|kvm-pit/);
    const r = await vm.agent.exec({
      command:
        "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; grep -c 'Clock Event Device: lapic' /proc/timer_list; sleep 1.2; echo ok",
    }).result;
    assert.deepEqual(r.stdout.toString().trim().split("\n"), ["tsc", "1", "ok"]);
  });

  it("a state saved with the PIT (every machine before) restores into a QEMU with one, and not into one without", async () => {
    const legacy = await bootBase("pit", true);
    let ramFile: string | undefined;
    const stateFile = path.join(dataDir, `test-pit-${process.pid}.state`);
    try {
      assert.equal(legacy.machine.pit, undefined, "a machine with the PIT records nothing, as before");
      assert.match(await qtree(legacy), /isa-pit|kvm-pit/);
      await legacy.agent.exec({ command: "echo before > /tmp/mark" }).result;
      await legacy.pause();
      await saveState(legacy.qmp, legacy.paths.migrationSocket, stateFile, 60_000, legacy.runAs);
      ramFile = legacy.disownRamFile();
      await legacy.destroy();
      const snapshot = { machine: legacy.machine, ramFile, stateFile, ignoreShared: true };
      const back = await Vm.restore({ id: `test-pit-back-${process.pid}`, dataDir, snapshot, timeoutMs: 60_000 });
      try {
        assert.equal((await back.agent.exec({ command: "cat /tmp/mark" }).result).stdout.toString(), "before\n");
      } finally {
        await back.destroy();
      }
      await assert.rejects(
        Vm.restore({
          id: `test-pit-wrong-${process.pid}`,
          dataDir,
          snapshot: { ...snapshot, machine: { ...legacy.machine, pit: false } },
          timeoutMs: 60_000,
        }),
      );
    } finally {
      await legacy.destroy();
      if (ramFile) fs.rmSync(ramFile, { force: true });
      fs.rmSync(stateFile, { force: true });
      // The refused restore's logs (QEMU's: "Unknown savevm section … 'i8254'").
      fs.rmSync(path.join(failedLogsDir(dataDir), `test-pit-wrong-${process.pid}`), { recursive: true, force: true });
    }
  });
});

describe("a VM that dies", () => {
  it("fails pending and later calls with a clear error when the guest kernel panics", async () => {
    const doomed = await bootBase("crash");
    try {
      const pending = doomed.agent.exec({ command: "sleep 600" }).result;
      await doomed.agent.exec({ command: "echo c > /proc/sysrq-trigger" }).result.catch(() => {});
      await assert.rejects(pending, (e: Error) => e instanceof AgentGoneError && /stopped|closed/.test(e.message));
      const exit = await doomed.exited;
      assert.ok(exit.code !== null || exit.signal !== null);
      await assert.rejects(doomed.agent.hello(), AgentGoneError);
    } finally {
      await doomed.destroy();
    }
  });

  it("fails a pending call at once when QEMU is killed", async () => {
    const doomed = await bootBase("kill");
    try {
      const pending = doomed.agent.exec({ command: "sleep 600" }).result;
      await new Promise((r) => setTimeout(r, 200));
      const t = Date.now();
      process.kill(doomed.pid, "SIGKILL");
      await assert.rejects(pending, AgentGoneError);
      assert.ok(Date.now() - t < 5000);
    } finally {
      await doomed.destroy();
    }
  });
});

describe("a VM that fails to start", () => {
  it("moves its logs out of vms/ to failed-vms/, and the error names files that exist", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-failstart-"));
    // A QEMU that says why and exits: the logs are what a person debugs it with.
    const fakeQemu = path.join(dir, "qemu");
    fs.writeFileSync(fakeQemu, "#!/bin/sh\necho 'qemu: could not open kernel: no such file' >&2\nexit 1\n", {
      mode: 0o755,
    });
    try {
      const images = await ensureImages(BUILTIN_RECIPES.python!, { cacheDir: imagesDir });
      const err = await Vm.boot({
        id: "failing",
        images,
        dataDir: dir,
        shmDir: dir,
        qemuBinary: fakeQemu,
        timeoutMs: 20_000,
      }).then(
        () => assert.fail("a QEMU that exits at once cannot start"),
        (e: MitosError) => e,
      );
      assert.match(err.message, /VM failing failed to start: QEMU exited during start \(code 1\)/);
      const qemuLog = String(err.context.qemu_log);
      assert.equal(qemuLog, path.join(failedLogsDir(dir), "failing", "qemu.log"));
      assert.match(fs.readFileSync(qemuLog, "utf8"), /could not open kernel/);
      assert.ok(err.remediation.includes(qemuLog), err.remediation);
      assert.match(err.detail ?? "", /could not open kernel/);
      assert.deepEqual(fs.readdirSync(path.join(dir, "vms")), [], "nothing is left in vms/");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
