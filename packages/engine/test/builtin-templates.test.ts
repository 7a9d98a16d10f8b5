// The built-in templates people work in (docs/templates.md "Built-in
// templates"), on real microVMs: `base` has the everyday tools an agent
// reaches for (what E2B's default `base` offers), `python` adds pip, venv and
// the code-interpreter stack, `node` adds npm.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { suiteEngine } from "../../../test-support/suite-engine.js";

const suite = suiteEngine("test-builtins");

/** Runs each command in a fresh sandbox of `template`; returns their stdout. */
async function runIn(template: string, commands: string[]): Promise<string[]> {
  const id = (await suite.engine.create(template)).id;
  try {
    const out: string[] = [];
    for (const command of commands) {
      const r = await suite.engine.exec(id, { command, timeoutMs: 120_000 }).result;
      assert.equal(r.exitCode, 0, `${template}: ${command}: ${r.stderr.toString()}`);
      out.push(r.stdout.toString());
    }
    return out;
  } finally {
    await suite.engine.terminate(id);
  }
}

describe("built-in templates", () => {
  it("base: git, curl, ps, ip, bash, less, tar, xz, python3 and node work", async () => {
    const [git, curl, ps, ip, bash] = await runIn("base", [
      "git --version",
      "curl --version",
      "ps aux",
      "ip addr",
      "bash -c 'echo $BASH_VERSION'",
      "less --version && tar --version && xz --version",
      "python3 -c 'print(6*7)'",
      "node -e 'console.log(6*7)'",
      "cd /tmp && git init -q r && cd r && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m x && git log --oneline | wc -l",
    ]);
    assert.match(git ?? "", /^git version 2\./);
    assert.match(curl ?? "", /^curl \d/);
    assert.match(ps ?? "", /PID/);
    assert.match(ip ?? "", /\blo\b/);
    assert.match(bash ?? "", /^5\./);
  });

  it("python: pip, venv, numpy and pandas; pip may install into the system python", async () => {
    const [pip, , imported, marker] = await runIn("python", [
      "pip --version",
      // Without pip: seeding the venv's own pip takes half a minute under TCG and proves nothing more.
      "python3 -m venv --without-pip /tmp/venv && /tmp/venv/bin/python -c 'import sys; print(sys.prefix)'",
      "python3 -c 'import numpy, pandas; print(numpy.__version__, pandas.__version__)'",
      // No PEP 668 marker: `pip install` into the system python is not refused.
      "ls /usr/lib/python3*/EXTERNALLY-MANAGED 2>/dev/null | wc -l",
    ]);
    assert.match(pip ?? "", /^pip \d/);
    assert.match(imported ?? "", /^\d+\.\d+/);
    assert.equal(marker?.trim(), "0");
  });

  it("node: node and npm", async () => {
    const [node, npm] = await runIn("node", ["node --version", "npm --version"]);
    assert.match(node ?? "", /^v\d+\./);
    assert.match(npm ?? "", /^\d+\./);
  });
});
