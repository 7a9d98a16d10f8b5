// The built-in templates measured through the API as users meet them:
// npm run bench:templates [-- --quick] [-- --images]
// A real mitosd; for each of base, python and node:
//  - root image size (apparent and allocated) from the image cache;
//  - with --images: the root image built cold into an empty cache (n=1);
//  - template build, cold (the image cached, the template not: a fresh env
//    value makes a new key) and cached (the same spec again under a new id:
//    the template cache);
//  - create → first exec returned, and the guest + VMM memory private to
//    that sandbox after the first command (metering);
//  - for python, claim from its warm pool → first exec, beside them.
// Records to bench/results/<date>-templates.{json,md} (results/quick/ with --quick).

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { BUILTIN_RECIPES, ensureImages } from "../packages/engine/src/image/build.js";
import { SandboxServer } from "../packages/sdk/src/index.js";
import { removeDataDir, tempDataDir } from "../test-support/data-dir.js";
import { startMitosd } from "../test-support/mitosd.js";
import { progressLogger, record, seriesList } from "./record.js";

const quick = process.argv.includes("--quick");
const coldImages = process.argv.includes("--images");
const BUILDS = quick ? 1 : 3;
const N = quick ? 3 : 10;
const MiB = 2 ** 20;
const TEMPLATES = ["base", "python", "node"];
const progress = progressLogger();
const imagesDir = process.env.MITOS_IMAGES_DIR ?? "/var/lib/mitos/images";

const dataDir = tempDataDir("bench-templates");
const daemon = await startMitosd(dataDir);
const server = new SandboxServer({ baseUrl: daemon.url, apiKey: daemon.token });
const { series, add } = seriesList();
const notes: string[] = [];

try {
  for (const name of TEMPLATES) {
    const recipe = BUILTIN_RECIPES[name];
    if (!recipe) throw new Error(`no built-in ${name}`);
    const images = await ensureImages(recipe, { cacheDir: imagesDir });
    const st = fs.statSync(images.rootfs);
    add(`${name}: root image, apparent size`, "MiB").values.push(st.size / MiB);
    add(`${name}: root image, allocated`, "MiB").values.push((st.blocks * 512) / MiB);
    if (coldImages) {
      progress(`${name}: building its root image into an empty cache`);
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-bench-images-"));
      try {
        const t0 = performance.now();
        await ensureImages(recipe, { cacheDir: tmp });
        add(`${name}: root image build, cold (mmdebstrap from the Debian mirror)`, "s").values.push(
          (performance.now() - t0) / 1000,
        );
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    }

    progress(`${name}: template builds`);
    const cold = add(`${name}: template build, cold (image cached)`, "s");
    const cached = add(`${name}: template build, from the template cache`, "s");
    for (let i = 0; i < BUILDS; i++) {
      const env = { BENCH_RUN: randomBytes(6).toString("hex") };
      const a = await server.createTemplate(`${name}-cold-${i}`, { image: name, env });
      cold.values.push(a.creationTimeMs / 1000);
      const b = await server.createTemplate(`${name}-cached-${i}`, { image: name, env });
      cached.values.push(b.creationTimeMs / 1000);
      if (b.version !== a.version)
        throw new Error(`${name}: the same spec gave versions ${a.version} and ${b.version}`);
      await server.deleteTemplate(`${name}-cold-${i}`);
    }

    progress(`${name}: create → first exec`);
    const first = add(`${name}: create → first exec returned (restore from the template)`, "ms");
    const priv = add(`${name}: guest + VMM memory private to the sandbox after its first command`, "MiB");
    const template = `${name}-cached-0`;
    for (let i = 0; i <= N; i++) {
      const t0 = performance.now();
      const sb = await server.fork(template);
      await sb.exec("true");
      if (i > 0) {
        first.values.push(performance.now() - t0);
        // Metering is sampled: give it a moment.
        await new Promise((r) => setTimeout(r, 1500));
        priv.values.push(((await sb.info()).memory?.privateBytes ?? Number.NaN) / MiB);
      }
      await sb.terminate();
    }
    if (name === "python") {
      const claim = add("python: claim from its warm pool → first exec returned", "ms");
      for (let i = 0; i <= N; i++) {
        const t0 = performance.now();
        const sb = await server.fork("python");
        await sb.exec("true");
        if (i > 0) claim.values.push(performance.now() - t0);
        await sb.terminate();
        // Let the pool refill, so each claim finds a warm VM.
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
    for (let i = 0; i < BUILDS; i++) await server.deleteTemplate(`${name}-cached-${i}`);
  }
  notes.push(
    "Builds go through POST /v1/templates (the TS SDK); a cold build boots the image, runs the template's steps (python: starts the code interpreter's kernel with the data stack imported) and freezes it; a cached one copies the template cache's files and checks them with one restore.",
    "Create → first exec: POST /v1/sandboxes from a template without a warm pool (a restore), then one exec over Connect. The python template keeps a warm pool (2 by default), measured separately.",
    "Private memory: metering's private bytes (guest pages this VM alone holds + its QEMU's own heap), read 1.5 s after the first command.",
    coldImages
      ? "Root image builds: mmdebstrap into an empty cache dir, packages from the Debian mirror (network-bound)."
      : "Root image builds were not measured in this run (--images).",
  );
  const accel = (await server.health()).accel ?? "?";
  record(
    "templates",
    {
      quick,
      accel,
      command: `npm run bench:templates${quick ? " -- --quick" : ""}${coldImages ? " -- --images" : ""}`,
    },
    series,
    notes,
  );
} finally {
  await daemon.stop();
  removeDataDir(dataDir);
}
