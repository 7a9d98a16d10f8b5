// The nftables ruleset of one sandbox's network namespace, generated from
// its policy. It lives in the namespace (the guest cannot reach it) and is
// replaced whole, in one transaction, when the policy changes. Order:
// replies, anti-spoofing, the resolver, always-denied ranges, other DNS,
// deny rules, allow rules and resolver pins, private ranges (an allow rule
// above opens one), then egress.

import { ALWAYS_DENIED, cidrText, type ParsedPolicy, PRIVATE_RANGES, type Rule } from "./policy.js";

/** The guest side every networked VM has (fixed in the template, so forks need no re-addressing). */
export const GUEST = {
  ip: "169.254.0.21",
  gateway: "169.254.0.22",
  prefix: 30,
  mac: "02:fc:00:00:00:05",
  /** The tap's own MAC: fixed, so a restored guest's ARP entry for its gateway stays right. */
  tapMac: "02:fc:00:00:00:06",
  tap: "tap0",
  uplink: "eth0",
} as const;

export const TABLE = "mitos";
/** Least time a resolver answer stays pinned (apps keep using an answer past a short TTL). */
export const PIN_FLOOR_SECONDS = 60;

export interface SlotAddressing {
  /** The namespace's end of the veth (the guest's traffic leaves as this address). */
  nsIp: string;
  /** mitosd's resolver: address and port the guest's DNS is sent to. */
  resolverIp: string;
  resolverPort: number;
  /** Addresses that are always denied besides ALWAYS_DENIED: the host's own and every slot. */
  extraDenied: string[];
}

export interface Pin {
  ip: string;
  /** undefined: any port. */
  port?: number;
  /** Seconds left (at least PIN_FLOOR_SECONDS are kept). */
  ttl: number;
}

function elements(items: string[]): string {
  return items.length === 0 ? "" : ` elements = { ${items.join(", ")} }`;
}

function cidrs(rules: Rule[], withPort: boolean): string[] {
  return rules
    .filter((r): r is Extract<Rule, { kind: "cidr" }> => r.kind === "cidr" && (r.port !== undefined) === withPort)
    .map((r) => (withPort ? `${cidrText(r.cidr)} . ${r.port}` : cidrText(r.cidr)));
}

export function pinElement(p: Pin): string {
  return p.port === undefined ? p.ip : `${p.ip} . ${p.port}`;
}

/** The whole table, replacing any previous one atomically (nft -f runs a file as one transaction). */
export function ruleset(policy: ParsedPolicy, a: SlotAddressing, pins: Pin[] = []): string {
  const denied = [...ALWAYS_DENIED, ...a.extraDenied];
  const t = `inet ${TABLE}`;
  const anyPins = pins.filter((p) => p.port === undefined).map(pinElement);
  const portPins = pins.filter((p) => p.port !== undefined).map(pinElement);
  return `table ${t} {}
delete table ${t}
table ${t} {
  set always_denied { type ipv4_addr; flags interval; auto-merge;${elements(denied)} }
  set private { type ipv4_addr; flags interval; auto-merge;${elements([...PRIVATE_RANGES])} }
  set deny_net { type ipv4_addr; flags interval; auto-merge;${elements(cidrs(policy.deny, false))} }
  set deny_net_port { type ipv4_addr . inet_service; flags interval;${elements(cidrs(policy.deny, true))} }
  set allow_net { type ipv4_addr; flags interval; auto-merge;${elements(cidrs(policy.allow, false))} }
  set allow_net_port { type ipv4_addr . inet_service; flags interval;${elements(cidrs(policy.allow, true))} }
  set pin { type ipv4_addr;${elements(anyPins)} }
  set pin_port { type ipv4_addr . inet_service;${elements(portPins)} }
  chain refuse {
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }
  chain dns {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "${GUEST.tap}" ip daddr ${GUEST.gateway} meta l4proto { tcp, udp } th dport 53 dnat ip to ${a.resolverIp}:${a.resolverPort}
  }
  chain masq {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${GUEST.uplink}" ip saddr ${GUEST.ip} snat ip to ${a.nsIp}
  }
  chain inbound {
    type filter hook input priority filter; policy accept;
    iifname "${GUEST.tap}" meta l4proto { tcp, udp, icmp } jump refuse
    iifname "${GUEST.tap}" drop
    iifname "${GUEST.uplink}" ct state established,related accept
    iifname "${GUEST.uplink}" drop
  }
  chain egress {
    type filter hook forward priority filter; policy drop;
    iifname "${GUEST.uplink}" oifname "${GUEST.tap}" ct state established,related accept
    iifname != "${GUEST.tap}" drop
    ct state established,related accept
    ct state invalid drop
    ether saddr != ${GUEST.mac} drop
    meta nfproto ipv6 drop
    ip saddr != ${GUEST.ip} drop
    ct state new meta l4proto tcp tcp flags & (syn | ack) != syn jump refuse
    ip daddr ${a.resolverIp} meta l4proto { tcp, udp } th dport ${a.resolverPort} ct status dnat accept
    ip daddr @always_denied jump refuse
    meta l4proto { tcp, udp } th dport { 53, 853 } jump refuse
    udp dport 443 jump refuse
    ip daddr @deny_net jump refuse
    meta l4proto { tcp, udp } ip daddr . th dport @deny_net_port jump refuse
    ip daddr @allow_net accept
    meta l4proto { tcp, udp } ip daddr . th dport @allow_net_port accept
    ip daddr @pin accept
    meta l4proto { tcp, udp } ip daddr . th dport @pin_port accept
    ip daddr @private jump refuse
    ${policy.egress === "allow" ? "accept" : "jump refuse"}
  }
}
`;
}

/**
 * Adds or removes pins of a live table. Expiry is mitosd's (network.ts
 * sweeps): nft 1.0.6 can neither refresh an element's timeout nor delete
 * one that may have expired without failing the whole transaction.
 */
export function changePins(op: "add" | "delete", pins: Pin[]): string {
  const any = pins.filter((p) => p.port === undefined).map(pinElement);
  const port = pins.filter((p) => p.port !== undefined).map(pinElement);
  return [
    ...(any.length ? [`${op} element inet ${TABLE} pin { ${any.join(", ")} }`] : []),
    ...(port.length ? [`${op} element inet ${TABLE} pin_port { ${port.join(", ")} }`] : []),
  ].join("\n");
}
