// Network slots: one namespace per networked VM, holding the tap QEMU uses
// (same name, addresses and MAC in every slot, so forks need no
// re-addressing) and one end of a veth whose other end is on the host with a
// unique /31 from the slot range. Slot numbers are claimed host-wide (one
// file each under /run/mitos/net-slots naming the data dir and VM), so
// several mitosds share one range; the namespace is the reclaim anchor:
// created first, deleted last, and deleting it takes the veth and tap along.

import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { MitosError } from "../errors.js";
import { type Cidr, intToIp, ipToInt, parseCidr } from "./policy.js";
import { GUEST } from "./ruleset.js";

export const DEFAULT_SLOT_RANGE = "10.201.0.0/16";
export const DEFAULT_REGISTRY = "/run/mitos/net-slots";
const NETNS_DIR = "/run/netns";

export interface Slot {
  index: number;
  /** Namespace name (`ip netns`), and its path for nsenter. */
  netns: string;
  netnsPath: string;
  /** The host's end of the veth: its name and address. */
  hostIf: string;
  hostIp: string;
  /** The namespace's end: the address the guest's traffic leaves as. */
  nsIp: string;
}

export interface Claim {
  dataDir: string;
  vmId: string;
}

/** Runs a program, feeding `input` on stdin; rejects with its stderr. */
export function run(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 30_000, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const e = new Error(`${cmd} ${args.join(" ")}: ${(stderr || err.message).trim()}`);
        (e as NodeJS.ErrnoException).code = (err as NodeJS.ErrnoException).code;
        reject(e);
      } else resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Runs nft in a slot's namespace with a ruleset file on stdin (one transaction). */
export function nftIn(slot: Slot, rules: string): Promise<string> {
  return run("nsenter", [`--net=${slot.netnsPath}`, "--", "nft", "-f", "-"], rules);
}

export class Slots {
  readonly range: Cidr;
  private readonly capacity: number;
  private next = 0;

  constructor(
    readonly dataDir: string,
    range: string = DEFAULT_SLOT_RANGE,
    readonly registry: string = DEFAULT_REGISTRY,
  ) {
    this.range = parseCidr(range);
    if (!(this.range.prefix >= 8 && this.range.prefix <= 30)) {
      throw new MitosError("invalid_input", `slot range ${range} must be an IPv4 CIDR between /8 and /30`, {
        remediation: "Give a private range no host network uses, e.g. 10.201.0.0/16.",
      });
    }
    this.capacity = 2 ** (32 - this.range.prefix) / 2;
  }

  slot(index: number): Slot {
    const base = ipToInt(this.range.addr) + 2 * index;
    const netns = `mitos-${index}`;
    return {
      index,
      netns,
      netnsPath: path.join(NETNS_DIR, netns),
      hostIf: `mitos${index}`,
      hostIp: intToIp(base),
      nsIp: intToIp(base + 1),
    };
  }

  /** Claims a free slot number host-wide for `vmId` (round robin: a freed number is reused last). */
  claim(vmId: string): Slot {
    fs.mkdirSync(this.registry, { recursive: true, mode: 0o700 });
    // Written aside and linked into place: a claim is never seen half-written.
    const tmp = path.join(this.registry, `.claim-${process.pid}-${vmId}`);
    fs.writeFileSync(tmp, JSON.stringify({ dataDir: this.dataDir, vmId } satisfies Claim), { mode: 0o600 });
    try {
      for (let i = 0; i < this.capacity; i++) {
        const index = (this.next + i) % this.capacity;
        try {
          fs.linkSync(tmp, path.join(this.registry, String(index)));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EEXIST") continue;
          throw err;
        }
        this.next = (index + 1) % this.capacity;
        return this.slot(index);
      }
    } finally {
      fs.rmSync(tmp, { force: true });
    }
    throw new MitosError(
      "unavailable",
      `all ${this.capacity} network slots of ${this.range.addr}/${this.range.prefix} are in use`,
      {
        remediation: "Terminate networked sandboxes, or give mitosd a larger slot range (--net-range).",
      },
    );
  }

  /** Claims of this data dir (index → VM id). */
  claims(): Map<number, string> {
    const out = new Map<number, string>();
    let names: string[];
    try {
      names = fs.readdirSync(this.registry);
    } catch {
      return out;
    }
    for (const n of names) {
      if (!/^\d+$/.test(n)) continue;
      try {
        const c = JSON.parse(fs.readFileSync(path.join(this.registry, n), "utf8")) as Claim;
        if (c.dataDir === this.dataDir) out.set(Number(n), c.vmId);
      } catch {
        // half-written by a crash: left for the owner's reclaim
      }
    }
    return out;
  }

  /**
   * Builds the slot: namespace, veth (the peer made directly in the
   * namespace, 4× cheaper than moving it), the tap owned by the VM's uid
   * (a capability-less QEMU attaches to it by name), addresses, forwarding.
   */
  async create(slot: Slot, owner: { uid: number; gid: number } | undefined): Promise<void> {
    // A host veth of the same name may still be going from the last user of this number.
    await run("ip", ["link", "del", slot.hostIf]).catch(() => {});
    await run("ip", ["netns", "add", slot.netns]);
    const user = owner ? ["user", String(owner.uid), "group", String(owner.gid)] : [];
    await run(
      "ip",
      ["-b", "-"],
      [
        `link add ${slot.hostIf} type veth peer name ${GUEST.uplink} netns ${slot.netns}`,
        `addr add ${slot.hostIp}/31 dev ${slot.hostIf}`,
        `link set ${slot.hostIf} up`,
      ].join("\n"),
    );
    await run(
      "ip",
      ["-n", slot.netns, "-b", "-"],
      [
        "link set lo up",
        `addr add ${slot.nsIp}/31 dev ${GUEST.uplink}`,
        `link set ${GUEST.uplink} up`,
        `route add default via ${slot.hostIp}`,
        `tuntap add ${GUEST.tap} mode tap ${user.join(" ")}`,
        `link set ${GUEST.tap} address ${GUEST.tapMac}`,
        `addr add ${GUEST.gateway}/${GUEST.prefix} dev ${GUEST.tap}`,
        `link set ${GUEST.tap} up`,
      ].join("\n"),
    );
    await run("nsenter", [
      `--net=${slot.netnsPath}`,
      "--",
      "sh",
      "-c",
      "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
    ]);
  }

  /** Removes the slot (idempotent: a missing namespace counts as removed) and frees its number. */
  async destroy(index: number): Promise<void> {
    const slot = this.slot(index);
    await run("ip", ["netns", "del", slot.netns]).catch((err: Error) => {
      if (fs.existsSync(slot.netnsPath)) throw err;
    });
    fs.rmSync(path.join(this.registry, String(index)), { force: true });
  }

  /** Whether anything of slot `index` is left on the host (leak checks). */
  static leftovers(index: number): string[] {
    const out: string[] = [];
    if (fs.existsSync(path.join(NETNS_DIR, `mitos-${index}`))) out.push(`netns mitos-${index}`);
    if (fs.existsSync(`/sys/class/net/mitos${index}`)) out.push(`veth mitos${index}`);
    return out;
  }
}
