// Guest images (kernel, initramfs, root filesystem) built by the scripts in
// guest/image and cached by content: the key of each artifact is a hash of
// everything that goes into it, so a rebuild with the same inputs is a hit.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { guestDir } from "../config.js";
import { MitosError } from "../errors.js";
import { withDirLock } from "./lock.js";

export interface ImageRecipe {
  /** Extra Debian packages on top of minbase. */
  packages: string[];
  /** A directory whose files are copied over the root (e.g. the code interpreter). */
  overlay?: string;
}

/** A built-in image; `interpreter` images start the code interpreter at template build. */
export interface BuiltinRecipe extends ImageRecipe {
  interpreter?: boolean;
}

/** Debian's Jupyter kernel and the data stack a code interpreter is expected to have (docs/code-interpreter.md). */
export const INTERPRETER_PACKAGES = [
  "python3-ipykernel",
  "python3-jupyter-client",
  "python3-numpy",
  "python3-pandas",
  "python3-matplotlib",
  // fonttools (for matplotlib) needs SciPy or munkres: without this apt picks
  // SciPy, whose Pythran pulls in g++ and the Boost headers (+600 MiB).
  "python3-munkres",
];

/**
 * What users of E2B's default `base` template find there (docs/templates.md):
 * a shell and the everyday tools an agent reaches for, python3 and Node.js.
 */
export const BASE_PACKAGES = [
  "bash",
  "coreutils",
  "procps",
  "iproute2",
  "curl",
  "ca-certificates",
  "git",
  "less",
  "tar",
  "xz-utils",
  "python3",
  "nodejs",
];

export const BUILTIN_RECIPES: Record<string, BuiltinRecipe> = {
  base: { packages: BASE_PACKAGES },
  python: {
    packages: [...BASE_PACKAGES, "python3-pip", "python3-venv", ...INTERPRETER_PACKAGES],
    overlay: guestDir.interpreter,
    interpreter: true,
  },
  node: { packages: [...BASE_PACKAGES, "npm"] },
};

export interface ImageSet {
  kernel: string;
  initrd: string;
  rootfs: string;
  /** Content keys, for logs and cache inspection. */
  keys: { kernel: string; initrd: string; rootfs: string };
}

export interface BuildProgress {
  artifact: "agent" | "kernel" | "initrd" | "rootfs" | "oci";
  /** A `==> step` line from a build script, or "cached"/"done". */
  step: string;
  elapsedMs: number;
}

export interface BuildOptions {
  /** Cache directory, e.g. /var/lib/mitos/images. */
  cacheDir: string;
  onProgress?: (p: BuildProgress) => void;
}

/** A Debian (or Alpine) package name. */
export const PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]*$/;

export async function ensureImages(recipe: ImageRecipe, opts: BuildOptions): Promise<ImageSet> {
  for (const p of recipe.packages) {
    if (!PACKAGE_RE.test(p)) {
      throw new MitosError("invalid_input", `"${p}" is not a Debian package name`, {
        remediation: "Package names are lower case letters, digits and + . - (e.g. python3, git).",
        context: { package: p },
      });
    }
  }
  const boot = await ensureBootImages(opts);
  const cache = opts.cacheDir;

  const packages = [...new Set(recipe.packages)].sort();
  const rootfsKey = hash([
    file(path.join(guestDir.image, "rootfs.sh")),
    file(path.join(guestDir.image, "ext4-image.sh")),
    Buffer.from(packages.join("\n")),
    ...(recipe.overlay ? treeParts(recipe.overlay) : []),
  ]);
  const overlayEnv: Record<string, string> = recipe.overlay ? { MITOS_ROOTFS_OVERLAY: recipe.overlay } : {};
  const rootfs = await cached(cache, `rootfs-${rootfsKey}.img`, "rootfs", opts, (out) =>
    runScript("rootfs", [path.join(guestDir.image, "rootfs.sh"), out, ...packages], opts, overlayEnv),
  );

  return { ...boot, rootfs, keys: { ...boot.keys, rootfs: rootfsKey } };
}

/** The kernel and initramfs (with the agent) every root image boots with. */
export async function ensureBootImages(
  opts: BuildOptions,
): Promise<{ kernel: string; initrd: string; keys: { kernel: string; initrd: string } }> {
  const cache = opts.cacheDir;
  fs.mkdirSync(cache, { recursive: true });
  const agentBin = await buildAgent(opts);
  const kernelKey = hash([file(path.join(guestDir.image, "kernel.sh"))]);
  const kernelDir = await cached(cache, `kernel-${kernelKey}`, "kernel", opts, (out) =>
    runScript("kernel", [path.join(guestDir.image, "kernel.sh"), out], opts),
  );

  const initrdKey = hash([
    kernelKey,
    file(path.join(guestDir.image, "initramfs.sh")),
    file(path.join(guestDir.image, "init")),
    file(agentBin),
  ]);
  const initrd = await cached(cache, `initrd-${initrdKey}.cpio`, "initrd", opts, (out) =>
    runScript("initrd", [path.join(guestDir.image, "initramfs.sh"), kernelDir, agentBin, out], opts),
  );
  return { kernel: path.join(kernelDir, "vmlinux"), initrd, keys: { kernel: kernelKey, initrd: initrdKey } };
}

/** Builds the static guest agent (make is a no-op when it is up to date). */
async function buildAgent(opts: BuildOptions): Promise<string> {
  const bin = path.join(guestDir.agent, "build", "mitos-agent");
  await run("agent", "make", ["-s", "-C", guestDir.agent], opts);
  if (!fs.existsSync(bin)) {
    throw new MitosError("internal", `agent build produced no ${bin}`, {
      remediation: "Run `make -C guest/agent` and read its errors; a C compiler (gcc) and static libc are needed.",
    });
  }
  return bin;
}

/**
 * Returns the cached artifact `name`, building it first if absent. The build
 * writes to a temporary path renamed into place, under a lock so concurrent
 * builders of the same key wait for one another instead of racing.
 */
export async function cached(
  cache: string,
  name: string,
  artifact: BuildProgress["artifact"],
  opts: BuildOptions,
  build: (out: string) => Promise<void>,
): Promise<string> {
  const target = path.join(cache, name);
  const started = Date.now();
  if (fs.existsSync(target)) {
    opts.onProgress?.({ artifact, step: "cached", elapsedMs: 0 });
    return target;
  }
  return withDirLock(`${target}.lock`, async () => {
    if (fs.existsSync(target)) return target;
    const tmp = `${target}.tmp-${process.pid}`;
    fs.rmSync(tmp, { recursive: true, force: true });
    try {
      await build(tmp);
      fs.renameSync(tmp, target);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
    opts.onProgress?.({ artifact, step: "done", elapsedMs: Date.now() - started });
    return target;
  });
}

function runScript(
  artifact: BuildProgress["artifact"],
  argv: string[],
  opts: BuildOptions,
  env: Record<string, string> = {},
): Promise<void> {
  return run(artifact, "bash", argv, opts, env);
}

/** Runs a build command, turning its `==> step` lines into progress events. */
export function run(
  artifact: BuildProgress["artifact"],
  cmd: string,
  argv: string[],
  opts: BuildOptions,
  env: Record<string, string> = {},
): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    const tail: string[] = [];
    const onLine = (line: string) => {
      tail.push(line);
      if (tail.length > 40) tail.shift();
      const m = /^==> (.*)$/.exec(line);
      if (m?.[1]) opts.onProgress?.({ artifact, step: m[1], elapsedMs: Date.now() - started });
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (d: string) => {
        buf += d;
        let i = buf.indexOf("\n");
        while (i >= 0) {
          onLine(buf.slice(0, i));
          buf = buf.slice(i + 1);
          i = buf.indexOf("\n");
        }
      });
    }
    child.on("error", (err) =>
      reject(
        new MitosError("unavailable", `cannot run ${cmd}: ${err.message}`, {
          remediation:
            "Install the image build tools: apt-get install -y make gcc mmdebstrap e2fsprogs busybox-static cpio lz4",
        }),
      ),
    );
    child.on("close", (code) => {
      if (code === 0) resolve();
      else
        reject(
          new MitosError("internal", `building the guest ${artifact} failed (exit ${code})`, {
            remediation: `Read the build output in cause; rerun \`${cmd} ${argv.join(" ")}\` by hand to debug.`,
            cause: tail.join("\n"),
            context: { artifact, command: [cmd, ...argv] },
          }),
        );
    });
  });
}

/** Every file under dir as (relative path, mode, content): what the image gets from it. */
function treeParts(dir: string): Buffer[] {
  const out: Buffer[] = [];
  const walk = (rel: string) => {
    for (const e of fs
      .readdirSync(path.join(dir, rel), { withFileTypes: true })
      .sort((a, b) => a.name.localeCompare(b.name))) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) walk(r);
      else {
        const st = fs.statSync(path.join(dir, r));
        out.push(Buffer.from(`${r}:${(st.mode & 0o777).toString(8)}`), file(path.join(dir, r)));
      }
    }
  };
  walk("");
  return out;
}

export function file(p: string): Buffer {
  return fs.readFileSync(p);
}

export function hash(parts: Array<Buffer | string>): string {
  const h = createHash("sha256");
  for (const p of parts) {
    const b = typeof p === "string" ? Buffer.from(p) : p;
    h.update(`${b.length}:`);
    h.update(b);
  }
  return h.digest("hex").slice(0, 16);
}
