import path from "node:path";
// Boots a python microVM, runs code in it, and shuts it down.
import { defaultDataDir, defaultShmDir } from "../config.js";
import { MitosError } from "../errors.js";
import { BUILTIN_RECIPES, ensureImages } from "../image/build.js";
import { chooseAccel } from "../qemu/accel.js";
import { Vm } from "../vm.js";

const dataDir = defaultDataDir();
const imagesDir = path.join(dataDir, "images");
const accel = chooseAccel();
console.log(`accelerator: ${accel.accel} (${accel.reason})`);
const images = await ensureImages(BUILTIN_RECIPES.python!, { cacheDir: imagesDir });
const t0 = Date.now();
const vm = await Vm.boot({ id: `demo-${process.pid}`, images, dataDir, shmDir: defaultShmDir(), accel: accel.accel });
console.log(`booted VM ${vm.id} (pid ${vm.pid}) in ${Date.now() - t0} ms; agent ${vm.info.version}; logs in ${vm.dir}`);
try {
  const r = await vm.agent.exec({
    command: "python3 -c 'import sys, platform; print(6*7, platform.release(), sys.version.split()[0])'",
  }).result;
  process.stdout.write(r.stdout);
  if (r.exitCode !== 0) process.stderr.write(r.stderr);
} catch (err) {
  if (err instanceof MitosError) console.error(`${err.code}: ${err.message}\nfix: ${err.remediation}`);
  process.exitCode = 1;
} finally {
  await vm.destroy();
}
