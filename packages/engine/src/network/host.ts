// What networked sandboxes need of the host itself, set up once per mitosd
// start: IPv4 forwarding, and one nftables table for the whole slot range
// (forwarding from slots, replies back to them, NAT to the uplink), so the
// host's rule count does not grow with the number of sandboxes.

import fs from "node:fs";
import os from "node:os";
import { MitosError } from "../errors.js";
import { type Cidr, cidrText } from "./policy.js";
import { run } from "./slots.js";

/** The host table's name: one per slot range, shared by every mitosd using that range. */
export function hostTable(range: Cidr): string {
  return `mitos_${range.addr.replaceAll(".", "_")}_${range.prefix}`;
}

export function hostRuleset(range: Cidr): string {
  const t = `ip ${hostTable(range)}`;
  const r = cidrText(range);
  return `table ${t} {}
delete table ${t}
table ${t} {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "mitos*" ip saddr ${r} accept
    oifname "mitos*" ct state established,related accept
    oifname "mitos*" drop
  }
  chain nat {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr ${r} oifname != "mitos*" masquerade
  }
}
`;
}

/** Enables forwarding and installs the host table (idempotent; the same text from every mitosd on the range). */
export async function setupHost(range: Cidr, log: (msg: string, f?: Record<string, unknown>) => void): Promise<void> {
  try {
    await run("nft", ["--version"]);
  } catch {
    throw new MitosError("unavailable", "networked sandboxes need nftables (the nft program) on the host", {
      remediation: "Install it (apt-get install nftables) and restart mitosd.",
    });
  }
  if (fs.readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8").trim() !== "1") {
    fs.writeFileSync("/proc/sys/net/ipv4/ip_forward", "1");
    log("network: enabled IPv4 forwarding on the host (net.ipv4.ip_forward=1)");
  }
  // QEMU runs as an unprivileged uid and opens /dev/net/tun to attach to the
  // tap its uid owns; opening it grants nothing else (creating a tap needs
  // CAP_NET_ADMIN). Debian's udev makes it 0666; some hosts leave it 0600.
  const tun = fs.statSync("/dev/net/tun", { throwIfNoEntry: false });
  if (!tun) {
    throw new MitosError("unavailable", "the host has no /dev/net/tun", {
      remediation: "Load the tun module (modprobe tun) and restart mitosd.",
    });
  }
  if ((tun.mode & 0o666) !== 0o666) {
    fs.chmodSync("/dev/net/tun", 0o666);
    log("network: made /dev/net/tun usable by QEMU's own uid (mode 0666, Debian's default)");
  }
  await run("nft", ["-f", "-"], hostRuleset(range));
  const blocking = await iptablesForwardDrops();
  if (blocking) {
    log("network: the host's iptables FORWARD chain drops by default; sandbox traffic may be dropped there", {
      remediation: `iptables -I FORWARD -s ${cidrText(range)} -j ACCEPT; iptables -I FORWARD -d ${cidrText(range)} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    });
  }
}

/** An iptables FORWARD policy of DROP (Docker sets one) wins over any accept in our table. */
async function iptablesForwardDrops(): Promise<boolean> {
  try {
    return /-P FORWARD DROP/.test(await run("iptables", ["-S", "FORWARD"]));
  } catch {
    return false;
  }
}

/** The host's own IPv4 addresses (every interface but the slots' veths): always denied to guests. */
export function hostAddresses(): string[] {
  const out = new Set<string>();
  for (const [name, addrs] of Object.entries(os.networkInterfaces())) {
    if (name.startsWith("mitos")) continue;
    for (const a of addrs ?? []) if (a.family === "IPv4") out.add(`${a.address}/32`);
  }
  return [...out];
}
