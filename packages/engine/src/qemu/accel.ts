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

/** QEMU arguments for the accelerator. */
export function accelArgs(accel: Accel): string[] {
  return accel === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg", "-cpu", "max"];
}

/**
 * Kernel command line words that keep a TCG guest's boot from hanging while
 * it calibrates the TSC (seen on 2-core hosts: "could not calculate TSC khz").
 * QEMU's TCG TSC runs at the host's rate, so the host's figure is right. Only
 * given when the host TSC is constant; KVM needs none.
 */
export function tcgClockHints(accel: Accel, cpuinfo: string = realProbe.cpuinfo()): string[] {
  if (accel !== "tcg") return [];
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const mhz = Number(/^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo)?.[1]);
  if (!flags.includes("constant_tsc") || !Number.isFinite(mhz) || mhz <= 0) return [];
  return [`tsc_early_khz=${Math.round(mhz * 1000)}`, "tsc=reliable"];
}
