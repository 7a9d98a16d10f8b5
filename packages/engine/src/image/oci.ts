// Root images from OCI images (issue 18, docs/templates.md): pulled with
// skopeo (registries, oci-archive:, docker-archive:, OCI layout dirs),
// checked entry by entry before anything is unpacked (no `..`, no absolute
// names, nothing written through a symlink, hard links inside the root),
// flattened with umoci (whiteouts), bounded in size after unpacking (sparse
// claims included), and made into the same read-only ext4 root image the
// Debian roots are. The agent and init come from the initramfs, so nothing
// of the image runs at build. Cached by the image's digest.

import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import * as tar from "tar";
import { guestDir } from "../config.js";
import { MitosError } from "../errors.js";
import { type BuildOptions, cached, ensureBootImages, file, hash, type ImageSet, run } from "./build.js";

/** Largest unpacked root (apparent bytes, sparse files at their full size). */
export const DEFAULT_MAX_ROOT_BYTES = 8 * 2 ** 30;

export interface OciConfig {
  /** The image's ENV, as a map. */
  env: Record<string, string>;
  /** WORKDIR; empty when the image sets none. */
  workdir: string;
  /** USER; empty when the image sets none. */
  user: string;
}

/** How packages are installed in an image, found in its root (docs/templates.md). */
export interface OciDistro {
  /** apt for Debian and Ubuntu images, apk for Alpine ones; absent: neither is there. */
  packageManager?: "apt" | "apk";
  /** The package mirrors its sources name, as URLs (what a package install must reach). */
  mirrors: string[];
}

export interface OciRoot extends OciDistro {
  /** The read-only ext4 root image. */
  rootfs: string;
  key: string;
  /** The manifest digest the root was made from (the reference as pinned). */
  digest: string;
  reference: string;
  config: OciConfig;
  /** Packages installed over the image (`packages` of a template on an OCI image). */
  packages?: string[];
}

/** What is kept beside a root image (`rootfs-oci-<key>.json`). */
type RootMeta = Omit<OciRoot, "rootfs" | "key">;

export interface OciOptions extends BuildOptions {
  /** A Docker-style auth file (`{"auths": {...}}`) for private registries. */
  authFile?: string;
  /** Registries (host[:port]) reached over plain HTTP besides loopback ones. */
  insecureRegistries?: string[];
  maxRootBytes?: number;
}

const TRANSPORTS = ["docker://", "oci-archive:", "docker-archive:", "oci:"];

/** Whether `image` names an OCI image rather than a built-in root (`base`, `python`). */
export function isOciReference(image: string): boolean {
  return TRANSPORTS.some((t) => image.startsWith(t)) || /[/:@]/.test(image);
}

/** The skopeo source for a reference, and whether its registry is reached without TLS. */
export function skopeoSource(ref: string, insecure: string[] = []): { source: string; tls: boolean } {
  if (/^(oci-archive|docker-archive|oci):/.test(ref)) return { source: ref, tls: true };
  const name = ref.startsWith("docker://") ? ref.slice("docker://".length) : ref;
  const first = name.split("/")[0] ?? "";
  // A first component with a dot, a colon or "localhost" is a registry host (Docker's rule).
  const registry = name.includes("/") && /[.:]|^localhost$/.test(first) ? first : "docker.io";
  const host = registry.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
  return { source: `docker://${name}`, tls: !(loopback || insecure.includes(registry)) };
}

/** Pulls, checks and unpacks an OCI image into a root image (cached by digest). */
export async function ensureOciRoot(ref: string, opts: OciOptions): Promise<OciRoot> {
  const { source, tls } = skopeoSource(ref, opts.insecureRegistries);
  const flags = [...(tls ? [] : ["--tls-verify=false"]), ...(opts.authFile ? ["--authfile", opts.authFile] : [])];
  const cache = opts.cacheDir;
  fs.mkdirSync(cache, { recursive: true });
  const digest = (await capture("skopeo", ["inspect", ...flags, "--format", "{{.Digest}}", source])).trim();
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) {
    throw new MitosError("invalid_input", `${ref}: no manifest digest (${digest.slice(0, 100)})`, {
      remediation: "Name an image with one platform manifest (linux/amd64), or pin it by digest.",
    });
  }
  const key = hash([digest, file(path.join(guestDir.image, "ext4-image.sh")), "oci-root-2"]);
  const maxBytes = opts.maxRootBytes ?? DEFAULT_MAX_ROOT_BYTES;
  return cachedRoot(cache, key, opts, async (work, out) => {
    // Pinned by digest where the source is a registry, so what is checked is what was inspected.
    const pinned = source.startsWith("docker://") ? `${source.replace(/[:@][^/]*$/, "")}@${digest}` : source;
    progress(opts, "pull", `skopeo copy ${pinned}`);
    await run(
      "oci",
      "skopeo",
      ["copy", "--quiet", ...srcFlags(flags), "--dest-decompress", pinned, `oci:${work}/layout:img`],
      opts,
    );
    const layout = readLayout(path.join(work, "layout"));
    const distro = await unpackToImage(work, layout.layers, out, ref, maxBytes, opts);
    return { digest, reference: ref, config: layout.config, ...distro };
  });
}

/**
 * A root image made from a single flattened tar of a whole root (what a
 * package install in a build VM left, exported by the guest), with the
 * image identity and config of `base`. The tar is checked like any layer.
 */
export async function rootFromTar(
  tarFile: string,
  base: OciRoot,
  key: string,
  packages: string[],
  opts: OciOptions,
): Promise<OciRoot> {
  const maxBytes = opts.maxRootBytes ?? DEFAULT_MAX_ROOT_BYTES;
  return cachedRoot(opts.cacheDir, key, opts, async (work, out) => {
    const distro = await unpackToImage(work, [tarFile], out, base.reference, maxBytes, opts);
    return { digest: base.digest, reference: base.reference, config: base.config, packages, ...distro };
  });
}

/** The root image cached under `key`, if there is one. */
export function cachedOciRoot(cacheDir: string, key: string): OciRoot | undefined {
  const rootfs = path.join(cacheDir, `rootfs-oci-${key}.img`);
  const metaFile = path.join(cacheDir, `rootfs-oci-${key}.json`);
  if (!fs.existsSync(rootfs) || !fs.existsSync(metaFile)) return undefined;
  return { ...(JSON.parse(fs.readFileSync(metaFile, "utf8")) as RootMeta), rootfs, key };
}

/** `rootfs-oci-<key>.img` and its meta, built by `make` in a work dir of its own when absent. */
async function cachedRoot(
  cache: string,
  key: string,
  opts: BuildOptions,
  make: (work: string, out: string) => Promise<RootMeta>,
): Promise<OciRoot> {
  fs.mkdirSync(cache, { recursive: true });
  const metaFile = path.join(cache, `rootfs-oci-${key}.json`);
  let meta: RootMeta | undefined;
  const rootfs = await cached(cache, `rootfs-oci-${key}.img`, "oci", opts, async (out) => {
    const work = path.join(cache, `.oci-${key}-${randomBytes(4).toString("hex")}`);
    fs.mkdirSync(work, { recursive: true, mode: 0o700 });
    try {
      meta = await make(work, out);
      fs.writeFileSync(metaFile, JSON.stringify(meta));
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
  meta ??= JSON.parse(fs.readFileSync(metaFile, "utf8")) as RootMeta;
  return { ...meta, rootfs, key };
}

/**
 * Checks the layers, flattens them with umoci (a bare tar becomes the one
 * layer of a fresh layout), bounds the size and makes the ext4 image `out`.
 * Returns what the root says about its package manager.
 */
async function unpackToImage(
  work: string,
  layers: string[],
  out: string,
  ref: string,
  maxBytes: number,
  opts: BuildOptions,
): Promise<OciDistro> {
  progress(opts, "check", `${layers.length} layers`);
  await checkLayers(layers);
  let image = `${work}/layout:img`;
  if (!fs.existsSync(path.join(work, "layout"))) {
    // A flattened root: one layer of a layout made here.
    image = `${work}/flat:img`;
    await run("oci", "umoci", ["init", "--layout", `${work}/flat`], opts);
    await run("oci", "umoci", ["new", "--image", image], opts);
    await run("oci", "umoci", ["raw", "add-layer", "--no-history", "--image", image, layers[0] as string], opts);
  }
  progress(opts, "unpack", "umoci raw unpack");
  await run("oci", "umoci", ["raw", "unpack", "--image", image, `${work}/root`], opts);
  const root = path.join(work, "root");
  const size = treeBytes(root, maxBytes, ref);
  const distro = distroOf(root);
  mountPoints(root);
  progress(opts, "image", `ext4 from ${Math.ceil(size / 2 ** 20)} MiB`);
  await run("oci", "bash", [path.join(guestDir.image, "ext4-image.sh"), root, out], opts);
  return distro;
}

/**
 * The package manager an unpacked root has and the mirrors its sources
 * name. Read without following any symlink the image made (a source list
 * linked to a host file must not be read on the host).
 */
export function distroOf(root: string): OciDistro {
  const has = (rel: string) => isInsideFile(root, rel);
  const text = (rel: string) => insideFile(root, rel) ?? "";
  if (has("etc/alpine-release") || has("sbin/apk")) {
    const mirrors = text("etc/apk/repositories")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => /^https?:\/\//.test(l));
    return { packageManager: "apk", mirrors: [...new Set(mirrors)] };
  }
  if (has("usr/bin/apt-get")) {
    const lists = [
      "etc/apt/sources.list",
      ...insideDir(root, "etc/apt/sources.list.d").map((f) => `etc/apt/sources.list.d/${f}`),
    ];
    const mirrors: string[] = [];
    for (const rel of lists) {
      for (const line of text(rel).split("\n")) {
        const l = line.trim();
        // One-line sources: deb [opts] URI suite …; deb822: URIs: a b.
        const one = /^deb(-src)?\s+(\[[^\]]*\]\s+)?(\S+)/.exec(l);
        if (one?.[3]) mirrors.push(one[3]);
        const many = /^URIs:\s*(.*)$/i.exec(l);
        if (many?.[1]) mirrors.push(...many[1].split(/\s+/));
      }
    }
    return { packageManager: "apt", mirrors: [...new Set(mirrors.filter((m) => /^https?:\/\//.test(m)))] };
  }
  return { mirrors: [] };
}

/** A regular file's text inside the root, undefined if any component is a symlink or it is not a file. */
function insideFile(root: string, rel: string): string | undefined {
  if (!isInsideFile(root, rel)) return undefined;
  const st = fs.lstatSync(path.join(root, rel));
  return st.size > 1 << 20 ? undefined : fs.readFileSync(path.join(root, rel), "utf8");
}

function isInsideFile(root: string, rel: string): boolean {
  let p = root;
  const parts = rel.split("/");
  for (const [i, part] of parts.entries()) {
    p = path.join(p, part);
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st || st.isSymbolicLink()) return false;
    if (i < parts.length - 1 ? !st.isDirectory() : !st.isFile()) return false;
  }
  return true;
}

/** The names in a directory inside the root, none through a symlink. */
function insideDir(root: string, rel: string): string[] {
  let p = root;
  for (const part of rel.split("/")) {
    p = path.join(p, part);
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st?.isDirectory()) return [];
  }
  return fs.readdirSync(p).filter((f) => f.endsWith(".list") || f.endsWith(".sources"));
}

/** The boot images with an OCI image's root. */
export async function ociImageSet(root: OciRoot, cacheDir: string): Promise<ImageSet> {
  const boot = await ensureBootImages({ cacheDir });
  return { ...boot, rootfs: root.rootfs, keys: { ...boot.keys, rootfs: root.key } };
}

/** skopeo copy names its source flags --src-…. */
function srcFlags(flags: string[]): string[] {
  return flags.map((f) => (f.startsWith("--") ? `--src-${f.slice(2)}` : f));
}

function progress(opts: BuildOptions, step: string, what: string): void {
  opts.onProgress?.({ artifact: "oci", step: `${step}: ${what}`, elapsedMs: 0 });
}

interface Layout {
  layers: string[];
  config: OciConfig;
}

/** The layer files and image config of a one-image OCI layout (JSON documents of the layout itself). */
function readLayout(dir: string): Layout {
  const blob = (digest: string) => {
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw bad(`a malformed digest in the image: ${digest.slice(0, 80)}`);
    return path.join(dir, "blobs", "sha256", digest.slice("sha256:".length));
  };
  const json = (f: string) => JSON.parse(fs.readFileSync(f, "utf8")) as Record<string, unknown>;
  const index = json(path.join(dir, "index.json")) as { manifests?: Array<{ digest: string }> };
  const manifestDigest = index.manifests?.[0]?.digest;
  if (!manifestDigest) throw bad("the pulled layout has no manifest");
  const manifest = json(blob(manifestDigest)) as { config?: { digest: string }; layers?: Array<{ digest: string }> };
  if (!manifest.config || !Array.isArray(manifest.layers)) throw bad("the manifest names no config or layers");
  const cfg = (
    json(blob(manifest.config.digest)) as { config?: { Env?: string[]; WorkingDir?: string; User?: string } }
  ).config;
  const env: Record<string, string> = {};
  for (const kv of cfg?.Env ?? []) {
    const i = kv.indexOf("=");
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return {
    layers: manifest.layers.map((l) => blob(l.digest)),
    config: { env, workdir: cfg?.WorkingDir ?? "", user: cfg?.User ?? "" },
  };
}

/**
 * Refuses layers whose entries would land outside the root when unpacked:
 * `..` components, absolute names, hard links to such names, and entries
 * whose path goes through a symlink an earlier entry made (the classic
 * `link -> /etc` then `link/passwd`), and entry types tar readers skip. Absolute symlink *targets* are fine:
 * they are resolved in the guest, where the image is the whole root.
 */
export async function checkLayers(layers: string[]): Promise<void> {
  const symlinks = new Set<string>();
  for (const [n, layer] of layers.entries()) {
    const problems: string[] = [];
    const parser = new tar.Parser({
      strict: true,
      onReadEntry: (e) => {
        const raw = e.header.path ?? e.path;
        const name = normal(e.path);
        if (name === undefined || normal(raw) === undefined) problems.push(`${JSON.stringify(raw)} leaves the root`);
        else {
          const parts = name.split("/");
          for (let i = 1; i < parts.length; i++) {
            const prefix = parts.slice(0, i).join("/");
            if (symlinks.has(prefix)) problems.push(`${JSON.stringify(raw)} is written through the symlink ${prefix}`);
          }
          if (e.type === "SymbolicLink") symlinks.add(name);
          else symlinks.delete(name);
          if (e.type === "Link" && normal(e.linkpath ?? "") === undefined) {
            problems.push(`hard link ${JSON.stringify(raw)} points outside the root (${e.linkpath})`);
          }
        }
        e.resume();
      },
    });
    // Entry types tar readers skip (GNU sparse files, which claim any size in a few bytes, among them).
    parser.on("ignoredEntry", (e: tar.ReadEntry) => {
      problems.push(`${JSON.stringify(e.path)} is an entry of type ${e.header.type ?? "?"} (e.g. a GNU sparse file)`);
    });
    await pipeline(fs.createReadStream(layer), parser);
    if (problems.length > 0) {
      throw bad(`layer ${n} of the image is refused: ${problems.slice(0, 3).join("; ")}`, problems);
    }
  }
}

/** A tar name relative to the root, or undefined when it is absolute or climbs out. */
function normal(name: string): string | undefined {
  if (name.startsWith("/")) return undefined;
  const out: string[] = [];
  for (const p of name.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") return undefined;
    out.push(p);
  }
  return out.join("/");
}

/**
 * What the initramfs mounts over or moves into the root, and /workspace: an
 * image made FROM scratch has none of them. Never through a symlink the
 * image put there (lstat: only missing names are made).
 */
function mountPoints(root: string): void {
  for (const [d, mode] of [
    ["proc", 0o555],
    ["sys", 0o555],
    ["dev", 0o755],
    ["run", 0o755],
    ["tmp", 0o1777],
    ["etc", 0o755],
    ["workspace", 0o755],
  ] as const) {
    const p = path.join(root, d);
    if (fs.lstatSync(p, { throwIfNoEntry: false })) continue;
    fs.mkdirSync(p);
    fs.chmodSync(p, mode);
  }
}

/** The tree's apparent size (a sparse file counts whole); refused past `max`. */
function treeBytes(root: string, max: number, ref: string): number {
  let total = 0;
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        total += fs.lstatSync(p).size;
        if (total > max) {
          throw bad(
            `${ref} unpacks to more than ${Math.floor(max / 2 ** 20)} MiB (${p.slice(root.length)} and before)`,
            [],
            {
              remediation: "Use a smaller image; sparse files count at their full size.",
            },
          );
        }
      }
    }
  };
  walk(root);
  return total;
}

function bad(message: string, problems: string[] = [], o: { remediation?: string } = {}): MitosError {
  return new MitosError("invalid_input", message, {
    remediation: o.remediation ?? "Rebuild the image without such entries; nothing of it was kept.",
    ...(problems.length > 0 ? { context: { problems: problems.slice(0, 20) } } : {}),
  });
}

/** A command's stdout; its stderr becomes the error's cause. */
function capture(cmd: string, argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, argv, { maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
      reject(
        missing
          ? new MitosError("unavailable", `${cmd} is not installed`, {
              remediation: "Install it: apt-get install -y skopeo umoci (scripts/install-deps.sh does).",
            })
          : new MitosError("invalid_input", `${cmd} ${argv[0]} failed: ${stderr.trim().slice(-400)}`, {
              remediation: /unauthorized|authentication required|denied/i.test(stderr)
                ? "The registry wants credentials: give mitosd a Docker-style auth file (registry_auth_file) or registry_credentials in its config file (docs/templates.md)."
                : "Check the image reference and the registry's address; a registry that is not on loopback and has no TLS must be listed in insecure_registries.",
              cause: stderr.slice(-2000),
            }),
      );
    });
  });
}
