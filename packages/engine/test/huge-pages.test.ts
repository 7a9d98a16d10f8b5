// QEMU's start without transparent huge pages (decision 0032): the helper's
// place in the command, the switch back, and the helper itself. The VMs'
// own THP state is checked on real QEMUs in confinement.test.ts.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import { describe, it } from "node:test";
import { qemuCommand } from "../src/confine.js";
import { THP_OFF_HELPER, thpLogLine, thpOffHelper } from "../src/qemu/huge-pages.js";

describe("QEMU without transparent huge pages", () => {
  it("the helper runs outermost, so nice, nsenter, setpriv and QEMU all inherit it", () => {
    const cmd = qemuCommand("qemu-system-x86_64", ["-M", "microvm"], undefined, "/run/netns/n1", 19, "/h/thp-off");
    assert.equal(cmd.command, "/h/thp-off");
    assert.deepEqual(cmd.args, [
      "nice",
      "-n",
      "19",
      "nsenter",
      "--net=/run/netns/n1",
      "--",
      "qemu-system-x86_64",
      "-M",
      "microvm",
    ]);
    assert.deepEqual(qemuCommand("qemu-system-x86_64", ["-M", "microvm"], undefined), {
      command: "qemu-system-x86_64",
      args: ["-M", "microvm"],
    });
  });

  it("MITOS_QEMU_THP=on or a helper not built starts QEMU as is", () => {
    assert.equal(thpOffHelper({ MITOS_QEMU_THP: "on" }), undefined);
    assert.equal(thpOffHelper({}, "/nonexistent/mitos-thp-off"), undefined);
    assert.equal(thpOffHelper({}), THP_OFF_HELPER, "npm run build made the helper");
    assert.deepEqual(thpLogLine({ MITOS_QEMU_THP: "on" }), [
      "QEMU starts with transparent huge pages",
      { helper: THP_OFF_HELPER, why: "MITOS_QEMU_THP=on" },
    ]);
    assert.equal(thpLogLine({})[0], "QEMU starts without transparent huge pages");
  });

  it("the helper disables THP for what it execs and exits 127 for a missing command", () => {
    const on = spawnSync("grep", ["^THP_enabled", "/proc/self/status"], { encoding: "utf8" });
    const off = spawnSync(THP_OFF_HELPER, ["grep", "^THP_enabled", "/proc/self/status"], { encoding: "utf8" });
    assert.equal(off.status, 0, off.stderr);
    assert.match(off.stdout, /THP_enabled:\s+0/);
    // The control: without the helper the same grep sees THP allowed (unless the whole host disabled it).
    const host = "/sys/kernel/mm/transparent_hugepage/enabled";
    if (fs.existsSync(host) && !fs.readFileSync(host, "utf8").includes("[never]"))
      assert.match(on.stdout, /THP_enabled:\s+1/);
    const missing = spawnSync(THP_OFF_HELPER, ["/nonexistent/program"], { encoding: "utf8" });
    assert.equal(missing.status, 127);
    assert.match(missing.stderr, /nonexistent\/program: No such file/);
    assert.equal(spawnSync(THP_OFF_HELPER, []).status, 2, "no command: usage");
  });
});
