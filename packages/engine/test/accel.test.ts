import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { accelArgs, chooseAccel, tcgKernelArgs } from "../src/qemu/accel.js";

const probe = (flags: string, kvm: boolean, env: NodeJS.ProcessEnv = {}) => ({
  env,
  cpuinfo: () => `processor\t: 0\nflags\t\t: fpu ${flags} sse2\n`,
  kvmOpens: () => kvm,
});

describe("accelerator choice", () => {
  it("uses KVM only with vmx/svm and an openable /dev/kvm", () => {
    assert.equal(chooseAccel(probe("vmx", true)).accel, "kvm");
    assert.equal(chooseAccel(probe("svm", true)).accel, "kvm");
    assert.equal(chooseAccel(probe("vmx", false)).accel, "tcg");
    // A paravirtual /dev/kvm without the CPU flags is not usable.
    assert.equal(chooseAccel(probe("hypervisor", true)).accel, "tcg");
  });

  it("honours MITOS_ACCEL and rejects nonsense", () => {
    assert.equal(chooseAccel(probe("", false, { MITOS_ACCEL: "kvm" })).accel, "kvm");
    assert.equal(chooseAccel(probe("vmx", true, { MITOS_ACCEL: "tcg" })).accel, "tcg");
    assert.throws(() => chooseAccel(probe("", false, { MITOS_ACCEL: "xen" })), /not an accelerator/);
  });

  it("picks the CPU model that fits the accelerator", () => {
    assert.deepEqual(accelArgs("kvm"), ["-accel", "kvm", "-cpu", "host"]);
    assert.deepEqual(accelArgs("tcg", {}), ["-accel", "tcg,tb-size=64", "-cpu", "max"]);
    assert.deepEqual(accelArgs("tcg", { MITOS_TCG_TB_MIB: "0" }), ["-accel", "tcg", "-cpu", "max"]);
  });
});

describe("TCG kernel arguments", () => {
  const cpuinfo = (flags: string) => `flags\t\t: fpu ${flags}\ncpu MHz\t\t: 2299.998\n`;
  it("turns off guest ASLR and pins the TSC rate under TCG on constant-TSC hosts only", () => {
    assert.deepEqual(tcgKernelArgs("tcg", cpuinfo("constant_tsc")), [
      "norandmaps",
      "tsc_early_khz=2299998",
      "tsc=reliable",
    ]);
    assert.deepEqual(tcgKernelArgs("tcg", cpuinfo("")), ["norandmaps"]);
    assert.deepEqual(tcgKernelArgs("kvm", cpuinfo("constant_tsc")), []);
  });
});
