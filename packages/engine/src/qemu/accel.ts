// Accelerator choice: KVM only where hardware virtualization really exists.
// A nested/paravirtual /dev/kvm without vmx/svm emulates too much to run a
// normal guest kernel (HOST-FACTS.md), so the CPU flags decide, not the device.

import fs from "node:fs";
import { MitosError } from "../errors.js";

export type Accel = "kvm" | "tcg";

export interface AccelChoice {
  accel: Accel;
  reason: string;
}

export interface AccelProbe {
  env: NodeJS.ProcessEnv;
  cpuinfo: () => string;
  kvmOpens: () => boolean;
}

const realProbe: AccelProbe = {
  env: process.env,
  cpuinfo: () => fs.readFileSync("/proc/cpuinfo", "utf8"),
  kvmOpens: () => {
    try {
      fs.closeSync(fs.openSync("/dev/kvm", "r+"));
      return true;
    } catch {
      return false;
    }
  },
};

export function chooseAccel(probe: AccelProbe = realProbe): AccelChoice {
  const forced = probe.env.MITOS_ACCEL;
  if (forced !== undefined && forced !== "") {
    if (forced !== "kvm" && forced !== "tcg") {
      throw new MitosError("invalid_input", `MITOS_ACCEL=${forced} is not an accelerator`, {
        remediation: "Set MITOS_ACCEL to kvm or tcg, or unset it for automatic choice.",
      });
    }
    return { accel: forced, reason: "MITOS_ACCEL" };
  }
  const flags = /^flags\s*:(.*)$/m.exec(probe.cpuinfo())?.[1]?.split(/\s+/) ?? [];
  const hw = flags.includes("vmx") || flags.includes("svm");
  if (!hw) return { accel: "tcg", reason: "CPU has no vmx/svm flag (no hardware virtualization)" };
  if (!probe.kvmOpens()) return { accel: "tcg", reason: "/dev/kvm cannot be opened" };
  return { accel: "kvm", reason: "hardware virtualization and /dev/kvm available" };
}

/**
 * TCG's translated-code buffer per VM (MiB). QEMU's default is 1 GiB, filled
 * before it is ever flushed, so a long-lived VM's private memory grows with
 * all the code it ever ran; a small buffer caps that cost per VM
 * (bench/results: per-child memory). `MITOS_TCG_TB_MIB` overrides.
 */
export const TCG_TB_MIB = 64;

/** QEMU arguments for the accelerator. */
export function accelArgs(accel: Accel, env: NodeJS.ProcessEnv = process.env): string[] {
  if (accel === "kvm") return ["-accel", "kvm", "-cpu", "host"];
  const tb = Number(env.MITOS_TCG_TB_MIB ?? TCG_TB_MIB);
  return ["-accel", Number.isInteger(tb) && tb > 0 ? `tcg,tb-size=${tb}` : "tcg", "-cpu", "max"];
}

/**
 * Kernel command line words for TCG guests; KVM needs none.
 * - `norandmaps`: TCG caches translated code by guest virtual address, so with
 *   ASLR every new process's libc and ld.so sit at new addresses and are
 *   translated again; without it an exec reuses the translations (decision 0004).
 * - TSC hints keep boot from hanging while it calibrates the TSC (seen on 2-core
 *   hosts: "could not calculate TSC khz"). QEMU's TCG TSC runs at the host's
 *   rate, so the host's figure is right; only given when the host TSC is constant.
 */
export function tcgKernelArgs(accel: Accel, cpuinfo: string = realProbe.cpuinfo()): string[] {
  if (accel !== "tcg") return [];
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const mhz = Number(/^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo)?.[1]);
  const tsc =
    flags.includes("constant_tsc") && Number.isFinite(mhz) && mhz > 0
      ? [`tsc_early_khz=${Math.round(mhz * 1000)}`, "tsc=reliable"]
      : [];
  return ["norandmaps", ...tsc];
}
