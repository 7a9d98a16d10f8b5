// The template cache on real microVMs: a template built by one engine is
// reused by another engine with its own data dir (copied, restored once,
// then served), and an entry that does not restore is dropped and rebuilt.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { defaultDataDir, Engine } from "../src/index.js";
import { TemplateCache } from "../src/template-cache.js";

const imagesDir = path.join(defaultDataDir(), "images");
const cacheDir = path.join(imagesDir, "templates");
const dirs: string[] = [];
// A spec of its own (init writes a random mark), so no other suite shares these entries.
const mark = `mark-${process.pid}-${Date.now()}`;
const spec = { image: "base", init: [`echo ${mark} > /root/mark`], resources: { memSizeMib: 256 } };

/** An engine in a fresh data dir, with its log lines collected. */
async function open(): Promise<{ engine: Engine; logs: string[] }> {
  const dataDir = tempDataDir("test-template-cache");
  dirs.push(dataDir);
  const logs: string[] = [];
  const engine = await Engine.open({ dataDir, imagesDir, poolTargets: {}, log: (msg) => logs.push(msg) });
  return { engine, logs };
}

async function markOf(engine: Engine): Promise<string> {
  const s = await engine.create("cached");
  try {
    const r = await engine.exec(s.id, { command: "cat /root/mark" }).result;
    return r.stdout.toString().trim();
  } finally {
    await engine.terminate(s.id);
  }
}

after(() => {
  for (const d of dirs) removeDataDir(d);
});

describe("template cache", () => {
  it("a second engine reuses a template the first one built, and it works", async () => {
    const before = new Set(fs.existsSync(cacheDir) ? fs.readdirSync(cacheDir) : []);
    const a = await open();
    let version = "";
    try {
      version = (await a.engine.createTemplate("cached", spec)).version ?? "";
      assert.ok(a.logs.includes("template ready"), a.logs.join("; "));
      assert.equal(await markOf(a.engine), mark);
    } finally {
      await a.engine.close({ killSandboxes: true });
    }
    const added = fs.readdirSync(cacheDir).filter((n) => !before.has(n) && !n.startsWith("."));
    // The template's own entry (its version is its key's start), beside the step cache's (docs/templates.md).
    const entry = added.find((n) => n.startsWith(version));
    assert.ok(version && entry, `the template's entry among the new ones: ${added.join(", ")} (version ${version})`);
    const b = await open();
    try {
      await b.engine.createTemplate("cached", spec);
      assert.ok(b.logs.includes("template ready (from the template cache)"), b.logs.join("; "));
      assert.ok(!b.logs.includes("template ready"), "not booted and initialised again");
      assert.equal(await markOf(b.engine), mark, "the cached guest is the one init ran in");
    } finally {
      await b.engine.close({ killSandboxes: true });
    }
    // An entry that does not restore: dropped, and the template is built as usual.
    fs.writeFileSync(path.join(cacheDir, entry, "state"), "not a device state");
    const c = await open();
    try {
      await c.engine.createTemplate("cached", spec);
      assert.ok(c.logs.includes("cached template did not restore; building it"), c.logs.join("; "));
      assert.ok(c.logs.includes("template ready"));
      assert.equal(await markOf(c.engine), mark);
    } finally {
      await c.engine.close({ killSandboxes: true });
    }
    for (const n of added) fs.rmSync(path.join(cacheDir, n), { recursive: true, force: true });
  });
});

describe("template cache keys", () => {
  it("follow the devices a new VM gets: a TCG template booted with QEMU's PIT is another entry (decision 0034)", () => {
    const cache = new TemplateCache(fs.mkdtempSync(path.join(os.tmpdir(), "mitos-keys-")));
    const inputs = (accel: "tcg" | "kvm") => ({
      images: { kernel: "k", initrd: "i", rootfs: "r", keys: { kernel: "a", initrd: "b", rootfs: "c" } },
      packages: [],
      env: {},
      memMiB: 512,
      vcpus: 1,
      accel,
      initWaitSeconds: 0,
    });
    const boot = (accel: "tcg" | "kvm", pit?: string) => {
      if (pit) process.env.MITOS_QEMU_PIT = pit;
      try {
        return cache.keys(inputs(accel), [], false).boot;
      } finally {
        delete process.env.MITOS_QEMU_PIT;
      }
    };
    assert.notEqual(boot("tcg"), boot("tcg", "on"));
    assert.equal(boot("kvm"), boot("kvm", "on"), "KVM VMs have the PIT either way");
  });
});
