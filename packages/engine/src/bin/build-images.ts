import path from "node:path";
// Builds (or finds in the cache) the guest images of the named built-in
// templates, printing progress. Usage: build-images [template...]
import { defaultDataDir } from "../config.js";
import { MitosError } from "../errors.js";
import { BUILTIN_RECIPES, ensureImages } from "../image/build.js";

const names = process.argv.slice(2);
const dataDir = defaultDataDir();
for (const name of names.length > 0 ? names : Object.keys(BUILTIN_RECIPES)) {
  const recipe = BUILTIN_RECIPES[name];
  if (!recipe) {
    console.error(`unknown template ${name}; built-in templates: ${Object.keys(BUILTIN_RECIPES).join(", ")}`);
    process.exit(2);
  }
  const started = Date.now();
  try {
    const images = await ensureImages(recipe, {
      cacheDir: path.join(dataDir, "images"),
      onProgress: (p) => {
        const t = (p.elapsedMs / 1000).toFixed(1);
        process.stderr.write(`[${name}] ${p.artifact}: ${p.step}${p.step === "cached" ? "" : ` (${t}s)`}\n`);
      },
    });
    console.log(`${name}: kernel ${images.kernel}\n${name}: initrd ${images.initrd}\n${name}: rootfs ${images.rootfs}`);
    process.stderr.write(
      `[${name}] ready in ${((Date.now() - started) / 1000).toFixed(1)}s (cache: ${dataDir}/images)\n`,
    );
  } catch (err) {
    if (err instanceof MitosError) {
      console.error(`error: ${err.code}: ${err.message}\n${err.detail ?? ""}\nfix: ${err.remediation}`);
    } else console.error(err);
    process.exit(1);
  }
}
