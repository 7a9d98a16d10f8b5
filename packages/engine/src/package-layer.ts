// `packages` on a template built from an OCI image (docs/templates.md
// "Packages on OCI images"): the image's own package manager (apt for
// Debian and Ubuntu, apk for Alpine) runs in a throwaway VM booted from the
// image, with a network device whose policy reaches only the mirrors the
// image's sources name. The guest then exports its whole root as one tar,
// which is checked like any image layer and becomes a new read-only root
// image, cached under a key of the image and the packages. Nothing of the
// image runs on the host, and the template itself keeps the network (or
// none) its spec asks for.

import fs from "node:fs";
import path from "node:path";
import type { BuildLog } from "./build-log.js";
import { type EngineContext, randomHex } from "./context.js";
import { MitosError } from "./errors.js";
import { hash, PACKAGE_RE } from "./image/build.js";
import { cachedOciRoot, type OciRoot, ociImageSet, rootFromTar } from "./image/oci.js";
import type { NetworkPolicy } from "./network/policy.js";
import { Vm } from "./vm.js";

/** Guest RAM of the install VM: apt's package lists want more than a sandbox's default. */
const INSTALL_MEM_MIB = 1024;
const INSTALL_TIMEOUT_MS = 600_000;

/** The root of `root` with `packages` installed (built once per image and package set). */
export async function withPackages(
  ctx: EngineContext,
  root: OciRoot,
  packages: string[],
  log: BuildLog,
): Promise<OciRoot> {
  const wanted = [...new Set(packages)].sort();
  for (const p of wanted) {
    if (!PACKAGE_RE.test(p)) {
      throw new MitosError("invalid_input", `"${p}" is not a package name`, {
        remediation: "Package names are lower case letters, digits and + . - (e.g. git, python3).",
        context: { field: "packages", package: p },
      });
    }
  }
  const pm = root.packageManager;
  if (!pm) {
    throw new MitosError("invalid_input", `${root.reference} has neither apt nor apk: packages cannot be installed`, {
      remediation: "Drop packages and put what you need in the image, or start from a Debian, Ubuntu or Alpine image.",
      context: { field: "packages" },
    });
  }
  const key = hash([root.key, pm, ...wanted, "oci-packages-1"]);
  const hit = cachedOciRoot(ctx.imagesDir, key);
  if (hit) {
    log.emit({ type: "phase", phase: "packages", message: `${wanted.join(" ")}: from the image cache` });
    return hit;
  }
  const policy = mirrorPolicy(root);
  log.emit({
    type: "phase",
    phase: "packages",
    message: `installing ${wanted.join(" ")} with ${pm} (reaching ${policy.allow_out.join(", ")})`,
  });
  const tarFile = path.join(ctx.imagesDir, `.packages-${key}-${randomHex(4)}.tar`);
  try {
    await installAndExport(ctx, root, pm, wanted, policy, tarFile, log);
    return await rootFromTar(tarFile, root, key, wanted, { cacheDir: ctx.imagesDir });
  } finally {
    fs.rmSync(tarFile, { force: true });
  }
}

/** Only the image's own mirrors, on their ports (docs/network.md policy syntax). */
function mirrorPolicy(root: OciRoot): NetworkPolicy & { allow_out: string[] } {
  const rules = new Set<string>();
  for (const m of root.mirrors) {
    try {
      const u = new URL(m);
      rules.add(`${u.hostname}:${u.port || (u.protocol === "https:" ? 443 : 80)}`);
    } catch {
      // not a URL: not a mirror we can reach
    }
  }
  if (rules.size === 0) {
    throw new MitosError("invalid_input", `${root.reference}: its package sources name no http(s) mirror`, {
      remediation:
        "Give the image an /etc/apt/sources.list (or /etc/apk/repositories) with http(s) mirrors, or drop packages.",
    });
  }
  return { egress: "deny", allow_out: [...rules], deny_out: [] };
}

async function installAndExport(
  ctx: EngineContext,
  root: OciRoot,
  pm: "apt" | "apk",
  packages: string[],
  policy: NetworkPolicy,
  tarFile: string,
  log: BuildLog,
): Promise<void> {
  const vmId = `pkg-${randomHex(6)}`;
  const group = ctx.confinement.group();
  const runAs = ctx.confinement.runAs(group, ctx.accel);
  let vm: Vm | undefined;
  try {
    const slot = await ctx.network.attach(vmId, runAs, policy).catch((err: unknown) => {
      runAs?.release();
      throw err;
    });
    vm = await Vm.boot({
      id: vmId,
      images: await ociImageSet(root, ctx.imagesDir),
      dataDir: ctx.dataDir,
      shmDir: ctx.shmDir,
      memMiB: INSTALL_MEM_MIB,
      vcpus: 1,
      accel: ctx.accel,
      timeoutMs: 120_000,
      network: true,
      netns: slot.netnsPath,
      ...(runAs ? { runAs } : {}),
      ...ctx.agentOpts,
    });
    ctx.journal.putVm({ vmId, pid: vm.pid, dir: vm.dir, files: [] });
    const install =
      pm === "apt"
        ? `export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends ${packages.join(" ")} && apt-get clean && rm -rf /var/lib/apt/lists/*`
        : `apk add --no-cache ${packages.join(" ")}`;
    const r = await vm.agent.exec({
      command: install,
      env: root.config.env,
      timeoutMs: INSTALL_TIMEOUT_MS,
      onStdout: (d) => log.emit({ type: "output", step: 0, stream: "stdout", data: d.toString() }),
      onStderr: (d) => log.emit({ type: "output", step: 0, stream: "stderr", data: d.toString() }),
    }).result;
    if (r.exitCode !== 0) {
      throw new MitosError("invalid_input", `installing ${packages.join(" ")} with ${pm} failed (exit ${r.exitCode})`, {
        remediation:
          "Check the package names against the image's distribution and that its mirrors answer; the output is in cause.",
        cause: `${r.stdout.toString().slice(-2000)}${r.stderr.toString().slice(-2000)}`,
        context: { field: "packages", exit_code: r.exitCode },
      });
    }
    // The whole root but what the initramfs mounts (they are made again for the image).
    log.emit({ type: "phase", phase: "packages", message: "exporting the root with the packages" });
    const out = fs.createWriteStream(tarFile, { mode: 0o600 });
    let stderr = "";
    const exported = await vm.agent.exec({
      command: "cd / && tar -cf - $(ls -A / | grep -v -x -e proc -e sys -e dev -e run -e tmp -e workspace)",
      timeoutMs: INSTALL_TIMEOUT_MS,
      collect: false,
      onStderr: (d) => {
        stderr = (stderr + d.toString()).slice(-2000);
      },
      onStdout: (d) => (out.write(d) ? undefined : new Promise<void>((resolve) => out.once("drain", () => resolve()))),
    }).result;
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    if (exported.exitCode !== 0) {
      throw new MitosError(
        "invalid_input",
        `exporting the root of ${root.reference} failed (exit ${exported.exitCode})`,
        {
          remediation: "The image needs tar (Debian and Ubuntu have it; Alpine's busybox provides it).",
          cause: stderr,
        },
      );
    }
  } finally {
    await vm?.destroy();
    await ctx.network.detach(vmId).catch(() => {});
    ctx.journal.deleteVm(vmId);
    group?.release();
  }
}
