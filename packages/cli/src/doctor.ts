// `mitos doctor`: is this host ready to run Mitos sandboxes? Each check says
// what it found and, when it fails, how to fix it.

import { execFile } from "node:child_process";
import { closeSync, constants, openSync, readdirSync, readFileSync, statfsSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { MitosError, SandboxServer } from "@mitos/sdk";
import { DEFAULT_DATA_DIR } from "./daemon.js";
import { formatBytes } from "./format.js";

export type CheckStatus = "ok" | "warn" | "fail";

export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

/** Below this much free space in /dev/shm, VM memory cannot be backed there. */
const MIN_SHM_FREE = 512 * 1024 * 1024;

export async function checkQemu(): Promise<CheckResult> {
  const name = "qemu";
  try {
    const { stdout } = await promisify(execFile)("qemu-system-x86_64", ["--version"], { timeout: 10_000 });
    const first = stdout.split("\n")[0]?.trim() ?? "";
    const m = /version (\S+)/.exec(first);
    return { name, status: "ok", detail: `qemu-system-x86_64 ${m?.[1] ?? first}` };
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === "ENOENT";
    return {
      name,
      status: "fail",
      detail: missing
        ? "qemu-system-x86_64 is not on PATH"
        : `qemu-system-x86_64 --version failed: ${(e as Error).message}`,
      fix: "install QEMU: `apt-get install -y qemu-system-x86` (Debian/Ubuntu), then make sure qemu-system-x86_64 is on PATH",
    };
  }
}

export function checkAccel(cpuinfoPath = "/proc/cpuinfo", kvmPath = "/dev/kvm"): CheckResult {
  const name = "accelerator";
  let cpuinfo = "";
  try {
    cpuinfo = readFileSync(cpuinfoPath, "utf8");
  } catch {
    // Treated as no virtualization flags.
  }
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const virt = flags.includes("vmx") || flags.includes("svm");
  let kvmError: string | undefined;
  try {
    closeSync(openSync(kvmPath, constants.O_RDWR));
  } catch (e) {
    kvmError = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
  }
  if (virt && kvmError === undefined) return { name, status: "ok", detail: "KVM (hardware virtualization)" };
  const why = !virt
    ? "the CPU does not expose vmx/svm (no nested virtualization)"
    : `${kvmPath} cannot be opened (${kvmError})`;
  return {
    name,
    status: "warn",
    detail: `TCG (software emulation): ${why}. This is a development mode: sandboxes work but are many times slower`,
    fix: virt
      ? `load the module (modprobe kvm_intel or kvm_amd) and give this user access to ${kvmPath} (add it to the kvm group)`
      : "for production, run on bare metal or a VM with nested virtualization enabled",
  };
}

export function checkShm(dir = "/dev/shm", mountsPath = "/proc/mounts"): CheckResult {
  const name = "/dev/shm";
  let fsType: string | undefined;
  try {
    for (const line of readFileSync(mountsPath, "utf8").split("\n")) {
      const [, mountPoint, type] = line.split(" ");
      if (mountPoint === dir) fsType = type;
    }
  } catch {
    // Unknown: reported below.
  }
  if (fsType !== "tmpfs") {
    return {
      name,
      status: "fail",
      detail: fsType ? `${dir} is ${fsType}, not tmpfs` : `${dir} is not a mount point`,
      fix: `mount a tmpfs there: \`mount -t tmpfs -o size=8g tmpfs ${dir}\` (in Docker: --shm-size=8g)`,
    };
  }
  let free: number;
  try {
    const s = statfsSync(dir);
    free = s.bavail * s.bsize;
  } catch (e) {
    return { name, status: "fail", detail: `cannot stat ${dir}: ${(e as Error).message}`, fix: `check ${dir}` };
  }
  if (free < MIN_SHM_FREE) {
    return {
      name,
      status: "fail",
      detail: `tmpfs with only ${formatBytes(free)} free (need at least ${formatBytes(MIN_SHM_FREE)})`,
      fix: `free space (terminate sandboxes: mitos sandbox ls) or grow it: \`mount -o remount,size=8g ${dir}\``,
    };
  }
  return { name, status: "ok", detail: `tmpfs, ${formatBytes(free)} free` };
}

/** Where mitosd keeps guest images: $MITOS_IMAGES_DIR, else ${MITOS_DATA_DIR:-/var/lib/mitos}/images. */
export function imagesDir(env: NodeJS.ProcessEnv): string {
  if (env.MITOS_IMAGES_DIR) return path.resolve(env.MITOS_IMAGES_DIR);
  return path.join(env.MITOS_DATA_DIR || DEFAULT_DATA_DIR, "images");
}

export function checkImages(dir: string): CheckResult {
  const name = "guest images";
  const fix = "build them from the repository root: `npm run images` (mitosd also builds them on first use, slowly)";
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return { name, status: "fail", detail: `${dir} does not exist`, fix };
  }
  const kernel = entries.some((e) => e.startsWith("kernel-") || e.startsWith("vmlinu"));
  const initrd = entries.some((e) => e.startsWith("initrd-"));
  const rootfs = entries.filter((e) => e.startsWith("rootfs-")).length;
  const missing = [!kernel && "kernel", !initrd && "initrd", rootfs === 0 && "rootfs"].filter(Boolean);
  if (missing.length > 0) return { name, status: "fail", detail: `${dir} has no ${missing.join(", ")}`, fix };
  return { name, status: "ok", detail: `${dir}: kernel, initrd, ${rootfs} rootfs image${rootfs === 1 ? "" : "s"}` };
}

export async function checkDaemon(baseUrl: string, apiKey: string | undefined): Promise<CheckResult[]> {
  const reach: CheckResult = { name: "mitosd", status: "ok", detail: "" };
  const server = new SandboxServer({ baseUrl, maxRetries: 0, ...(apiKey ? { apiKey } : {}) });
  try {
    const h = await server.health();
    reach.detail = `${server.baseUrl} answers: version ${h.version}, ${h.accel}, ${h.templates} template(s), ${h.sandboxes} sandbox(es)`;
  } catch (e) {
    return [
      {
        name: "mitosd",
        status: "fail",
        detail: `not reachable at ${server.baseUrl}${e instanceof Error ? ` (${e.message})` : ""}`,
        fix: "start it with `mitos up` (or `mitos server` in the foreground), or point --url / MITOS_BASE_URL at it",
      },
    ];
  }
  const token: CheckResult = { name: "token", status: "ok", detail: "accepted" };
  try {
    await server.listTemplates();
  } catch (e) {
    token.status = "fail";
    if (e instanceof MitosError && e.code === "unauthorized") {
      token.detail = apiKey ? "mitosd refused the token" : "no token found";
      token.fix =
        "pass --api-key, set MITOS_API_KEY, or make the token file readable (<data-dir>/token, found via MITOS_DATA_DIR)";
    } else {
      token.detail = `an authenticated call failed: ${e instanceof Error ? e.message : String(e)}`;
      token.fix = "check mitosd's log";
    }
  }
  return [reach, token];
}

export async function runChecks(baseUrl: string, apiKey: string | undefined, env: NodeJS.ProcessEnv) {
  return [
    await checkQemu(),
    checkAccel(),
    checkShm(),
    checkImages(imagesDir(env)),
    ...(await checkDaemon(baseUrl, apiKey)),
  ];
}

export function formatChecks(results: CheckResult[]): string {
  const mark: Record<CheckStatus, string> = { ok: "ok  ", warn: "warn", fail: "FAIL" };
  let s = "";
  for (const r of results) {
    s += `[${mark[r.status]}] ${r.name}: ${r.detail}\n`;
    if (r.fix && r.status !== "ok") s += `       fix: ${r.fix}\n`;
  }
  const failed = results.filter((r) => r.status === "fail").length;
  s += failed === 0 ? "all checks passed\n" : `${failed} check${failed === 1 ? "" : "s"} failed\n`;
  return s;
}
