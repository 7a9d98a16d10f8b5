// The QEMU command line of a Mitos microVM (ARCHITECTURE.md section 2).

import { type Accel, accelArgs, tcgKernelArgs } from "./accel.js";

export interface VmPaths {
  agentSocket: string;
  qmpSocket: string;
  consoleLog: string;
}

export interface MemoryBacking {
  /** RAM file (on a tmpfs). */
  path: string;
  /** true: writes go to the file (template build); false: private copy-on-write (restore). */
  share: boolean;
}

export interface QemuConfig {
  accel: Accel;
  vcpus: number;
  memMiB: number;
  kernel: string;
  initrd: string;
  rootfs: string;
  memory: MemoryBacking;
  paths: VmPaths;
  /** Extra kernel command line words (e.g. hostname). */
  cmdline?: string[];
  /** Wait for `migrate-incoming` instead of booting. */
  incoming?: boolean;
  /** The workspace disk's writable qcow2 layer (disk.ts); the guest mounts it at /workspace. */
  disk?: string;
  /** A virtio-net device on the tap of the namespace QEMU starts in (network/slots.ts); else no NIC. */
  network?: { tap: string; mac: string };
  /** QEMU's i8254 PIT (machine option `pit`); see `newMachinePit`. */
  pit: boolean;
}

/** The QMP device name of the workspace disk's drive (block jobs and live snapshots name it). */
export const WORKSPACE_DRIVE = "ws";
/** Its virtio serial: the guest's init finds the disk by it, whatever its probe order. */
export const WORKSPACE_SERIAL = "mitos-workspace";

export const KERNEL_CMDLINE = [
  "console=ttyS0",
  "reboot=t",
  // A panic (e.g. the agent, PID 1, died) reboots, and -no-reboot turns that
  // into QEMU exiting, so the host sees the death instead of a hang.
  "panic=-1",
  "quiet",
  "loglevel=4",
  "mitos.root=serial:mitos-root",
  // No pressure-stall averaging (a kworker every 2 s in every idle guest; nothing reads it).
  "psi=0",
];

/**
 * QEMU's seccomp filter: no obsolete syscalls, no setuid/setgid, no fork or
 * exec, no scheduler/affinity changes. Nothing Mitos asks of QEMU needs them
 * (migration goes over Unix sockets, never `exec:`).
 */
export const SECCOMP_ARGS = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"];

/**
 * Whether a VM booted now gets QEMU's i8254 PIT. Under TCG, no: Linux runs on
 * the TSC and the local APIC's deadline timer and leaves the PIT's channel 0
 * counting, and QEMU's emulation of it woke every idle VM's main loop 36 times
 * a second: 0.2-0.3 % of a host core per idle sandbox, the ceiling on how many
 * live children 2 cores hold (decision 0034). Under KVM the PIT is the
 * kernel's (no QEMU wake-ups) and stays, untested here without it. A saved
 * state keeps the devices it was saved with (`MachineSpec.pit`).
 * `MITOS_QEMU_PIT=on` boots new VMs with it, as before.
 */
export function newMachinePit(accel: Accel, env: NodeJS.ProcessEnv = process.env): boolean {
  return accel !== "tcg" || env.MITOS_QEMU_PIT === "on";
}

/** The `-M` value for a VM with or without the PIT. */
export function machineOption(pit: boolean): string {
  return pit ? "microvm,acpi=on" : "microvm,acpi=on,pit=off";
}

export function qemuArgs(c: QemuConfig): string[] {
  const args = [
    "-M",
    machineOption(c.pit),
    ...accelArgs(c.accel),
    "-smp",
    String(c.vcpus),
    "-m",
    `${c.memMiB}M`,
    "-object",
    `memory-backend-file,id=mem,size=${c.memMiB}M,mem-path=${c.memory.path},share=${c.memory.share ? "on" : "off"}`,
    "-machine",
    "memory-backend=mem",
    "-nodefaults",
    // No network device unless asked: a guest has only its loopback (docs/security.md, docs/network.md).
    ...(c.network
      ? [
          "-netdev",
          `tap,id=net0,ifname=${c.network.tap},script=no,downscript=no`,
          "-device",
          `virtio-net-device,netdev=net0,mac=${c.network.mac}`,
        ]
      : ["-nic", "none"]),
    "-no-user-config",
    ...SECCOMP_ARGS,
    "-no-reboot",
    "-display",
    "none",
    "-serial",
    `file:${c.paths.consoleLog}`,
    "-kernel",
    c.kernel,
    "-initrd",
    c.initrd,
    "-append",
    [
      ...KERNEL_CMDLINE,
      ...tcgKernelArgs(c.accel),
      ...(c.disk !== undefined ? [`mitos.workspace=serial:${WORKSPACE_SERIAL}`] : []),
      ...(c.cmdline ?? []),
    ].join(" "),
    "-chardev",
    `socket,id=agent,path=${c.paths.agentSocket},server=on,wait=off`,
    "-device",
    "virtio-serial-device",
    "-device",
    "virtserialport,chardev=agent,name=mitos.agent",
    "-drive",
    `file=${c.rootfs},if=none,id=root,format=raw,readonly=on`,
    "-device",
    "virtio-blk-device,drive=root,serial=mitos-root",
    "-object",
    "rng-random,id=rng,filename=/dev/urandom",
    "-device",
    "virtio-rng-device,rng=rng",
    "-qmp",
    `unix:${c.paths.qmpSocket},server=on,wait=off`,
  ];
  if (c.disk !== undefined) {
    // A full host disk is an I/O error in the guest (werror=report), not a VM
    // that QEMU stops; discards from the guest's fstrim free host space.
    args.push(
      "-drive",
      `file=${c.disk},if=none,id=${WORKSPACE_DRIVE},format=qcow2,werror=report,rerror=report,discard=unmap`,
      "-device",
      `virtio-blk-device,drive=${WORKSPACE_DRIVE},serial=${WORKSPACE_SERIAL}`,
    );
  }
  // Paused after the state loads: the caller decides when it runs (warm pools).
  if (c.incoming) args.push("-S", "-incoming", "defer");
  return args;
}
