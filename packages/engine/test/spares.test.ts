// Spare VMs with a fake QEMU (engine.test.ts and faults.test.ts drive real
// ones): a base copied ahead goes into the file before any spare starts, is
// handed to the fork that takes the spares, and is let go (its pages punched
// out) when the VM it came from exits; a spare that dies while waiting is
// destroyed, and a generation left without spares drops its file; a
// generation is as large as the last fork within the host's memory, and a
// taken spare that cannot be set back to normal priority is not used.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, it } from "node:test";
import type { PrefilledBase } from "../src/capture-mapping.js";
import { SpareVms } from "../src/spares.js";
import type { MachineSpec, Vm } from "../src/vm.js";

const machine = {
  images: { kernel: "k", initrd: "i", rootfs: "r", keys: {} },
  memMiB: 4,
  vcpus: 1,
  accel: "tcg",
} as unknown as MachineSpec;

interface FakeVm {
  pid: number;
  running: boolean;
  destroyed: boolean;
  /** What renice() answers (false: mitosd could not set its priority back). */
  reniceable: boolean;
  reniced: boolean;
  die: () => void;
}

let dir: string;
let events: string[];
let vms: FakeVm[];

function fakeVm(): Vm {
  let die = () => {};
  const exited = new Promise<void>((r) => {
    die = r;
  });
  const v: FakeVm & {
    exited: Promise<void>;
    ramTouched: () => boolean;
    renice: () => boolean;
    destroy: () => Promise<void>;
  } = {
    pid: 1000 + vms.length,
    running: true,
    destroyed: false,
    reniceable: true,
    reniced: false,
    exited,
    die: () => {
      v.running = false;
      die();
    },
    ramTouched: () => false,
    renice: () => {
      v.reniced = v.reniceable;
      return v.reniceable;
    },
    destroy: async () => {
      v.destroyed = true;
    },
  };
  vms.push(v);
  return v as unknown as Vm;
}

function spares(opts: { size?: number; room?: () => number } = {}): SpareVms {
  return new SpareVms({
    size: opts.size ?? 2,
    ...(opts.room ? { room: opts.room } : {}),
    shmDir: dir,
    idleMs: 60_000,
    spawn: async (_m, ramFile) => {
      events.push(`spawn ${fs.statSync(ramFile).blocks > 0 ? "on the copy" : "on an empty file"}`);
      return fakeVm();
    },
    group: () => undefined,
    share: () => {},
  });
}

/** A copy ahead: writes a page of data into the file and holds some fd, as prefillBase does. */
function copyAhead(): (ramFile: string) => Promise<PrefilledBase> {
  return async (ramFile) => {
    events.push("copy");
    await new Promise((r) => setTimeout(r, 50));
    const fd = fs.openSync(ramFile, "r+");
    fs.writeSync(fd, Buffer.alloc(4096, 7), 0, 4096, 0);
    fs.closeSync(fd);
    const held = fs.openSync(ramFile, "r");
    const st = fs.fstatSync(held);
    return { fd: held, dev: st.dev, ino: st.ino };
  };
}

const waitFor = async (cond: () => boolean) => {
  const until = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > until) throw new Error("condition not met");
    await new Promise((r) => setTimeout(r, 10));
  }
};

/** Spares primed with a copy ahead and up; `exit` is the exit of the VM the copy came from. */
async function primedWithCopy(): Promise<{ s: SpareVms; exit: () => void }> {
  const s = spares();
  let exit = () => {};
  const until = new Promise<void>((r) => {
    exit = r;
  });
  s.prime(machine, { copy: copyAhead(), until });
  await waitFor(() => s.pids.length === 1);
  return { s, exit };
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-spares-"));
  events = [];
  vms = [];
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

it("copies the base into the file before the spares start, and hands it to the fork that takes them", async () => {
  const s = spares();
  s.prime(machine, { copy: copyAhead(), until: new Promise(() => {}) });
  await waitFor(() => s.pids.length === 1);
  assert.deepEqual(events, ["copy", "spawn on the copy"]);
  const taken = s.take(machine, 1);
  assert.ok(taken);
  const got = await taken.prefill;
  assert.ok(got, "the copy ahead comes with the spares");
  assert.equal(fs.fstatSync(got.fd).ino, got.ino, "its fd is still held: the taker closes it");
  fs.closeSync(got.fd);
  await s.close();
});

it("lets the copy go when the VM it came from exits: fd closed, pages punched out, the size kept", async () => {
  const { s, exit } = await primedWithCopy();
  const file = s.ramFile as string;
  assert.ok(fs.statSync(file).blocks > 0);
  exit();
  await waitFor(() => fs.statSync(file).blocks === 0);
  assert.equal(fs.statSync(file).size, 4 << 20, "spares map it: the size stays");
  const taken = s.take(machine, 1);
  assert.equal(await taken?.prefill, undefined, "nothing to skip the fork's own copy with");
  await s.close();
});

it("destroys a spare that dies while waiting, and drops a generation left without spares", async () => {
  const s = spares();
  s.prime(machine);
  await waitFor(() => s.pids.length === 1);
  const file = s.ramFile as string;
  assert.deepEqual(events, ["spawn on an empty file"]);
  vms[0]?.die();
  await waitFor(() => vms[0]?.destroyed === true);
  assert.equal(s.ramFile, undefined);
  assert.equal(fs.existsSync(file), false, "its file went with it");
  await s.close();
});

it("closes the copy's fd once when the spares close before its VM exits (the number may belong to another file by then)", async () => {
  const { s, exit } = await primedWithCopy();
  await s.close();
  // Whatever gets the freed number next must survive the VM's exit.
  const other = fs.openSync(path.join(dir, "other"), "w");
  exit();
  await new Promise((r) => setTimeout(r, 50));
  assert.doesNotThrow(() => fs.fstatSync(other), "another file's fd was closed");
  fs.closeSync(other);
});

it("keeps as many spares as the last fork had children, up to its size and within the host's memory", async () => {
  let room = 100;
  const s = spares({ size: 16, room: () => room });
  s.prime(machine);
  await waitFor(() => s.pids.length === 1); // no fork yet: one
  assert.equal(s.take(machine, 8)?.vms.length, 1);
  s.prime(machine);
  await waitFor(() => s.pids.length === 8);
  assert.equal(s.take(machine, 20)?.vms.length, 8);
  s.prime(machine);
  await waitFor(() => s.pids.length === 16);
  assert.equal(s.take(machine, 20)?.vms.length, 16, "at most its size");
  room = 3;
  s.prime(machine);
  await waitFor(() => s.pids.length === 3);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(s.pids.length, 3, "no more than the memory floor allows");
  await s.close();
});

it("sets taken spares back to normal priority, and does not use one that cannot be", async () => {
  const s = spares();
  s.prime(machine);
  await waitFor(() => s.pids.length === 1);
  s.take(machine, 2);
  s.prime(machine);
  await waitFor(() => s.pids.length === 2);
  const [stuck, ok] = vms.slice(-2) as [FakeVm, FakeVm];
  stuck.reniceable = false;
  const taken = s.take(machine, 2);
  assert.equal(taken?.vms.length, 1);
  assert.equal(ok.reniced, true);
  assert.equal(stuck.destroyed, true, "a spare left at low priority would be a slow child");
  await s.close();
});

it("hands spares only to a fork of a machine with the same devices (a saved machine with QEMU's PIT, decision 0034)", async () => {
  const s = spares();
  s.prime({ ...machine, pit: false });
  await waitFor(() => s.pids.length === 1);
  assert.equal(s.take(machine, 1), undefined, "a parent with the PIT cannot load into spares without it");
  assert.equal(s.take({ ...machine, pit: false }, 1)?.vms.length, 1);
  await s.close();
});
