// A sandbox's network policy (ARCHITECTURE.md §7): what it is, how it is
// checked, and what its rules mean. Pure: the ruleset and the resolver read
// the parsed form. docs/network.md is the user's account of the same rules.

import net from "node:net";
import { MitosError } from "../errors.js";

export type Egress = "deny" | "allow";

/** The policy as the API spells it. */
export interface NetworkPolicy {
  egress: Egress;
  allow_out: string[];
  deny_out: string[];
}

/** An IPv4 range: first address and prefix length. */
export interface Cidr {
  addr: string;
  prefix: number;
}

/** One rule of allow_out or deny_out, parsed. */
export type Rule =
  | { kind: "cidr"; cidr: Cidr; port?: number }
  | { kind: "name"; name: string; wildcard: boolean; port?: number };

export interface ParsedPolicy {
  egress: Egress;
  allow: Rule[];
  deny: Rule[];
}

export const MAX_RULES = 256;

/** Ranges no policy opens: this host, loopback, link-local (metadata), multicast and reserved. */
export const ALWAYS_DENIED: readonly string[] = [
  "0.0.0.0/8",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "224.0.0.0/4",
  "240.0.0.0/4",
];

/** Private ranges: denied unless an allow_out CIDR names them. */
export const PRIVATE_RANGES: readonly string[] = ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"];

const NAME_RE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function invalid(message: string, value: unknown): MitosError {
  return new MitosError("invalid_input", message.startsWith("network") ? message : `network: ${message}`, {
    remediation:
      'Give network as {egress: "deny"|"allow", allow_out: [...], deny_out: [...]}; each rule is an IPv4 CIDR ("10.1.0.0/16"), an address, a name ("api.example.com") or "*.example.com", each optionally with ":port". See docs/network.md.',
    context: { field: "network", value },
  });
}

/** Checks and normalizes an API policy (missing lists are empty; names lower-cased). */
export function checkPolicy(value: unknown): NetworkPolicy {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid("network must be an object", value);
  }
  const v = value as Record<string, unknown>;
  for (const k of Object.keys(v)) {
    if (!["egress", "allow_out", "deny_out"].includes(k))
      throw invalid(`unknown network field ${JSON.stringify(k)}`, k);
  }
  const egress = v.egress ?? "deny";
  if (egress !== "deny" && egress !== "allow") throw invalid(`network.egress must be "deny" or "allow"`, egress);
  const list = (key: "allow_out" | "deny_out"): string[] => {
    const l = v[key] ?? [];
    if (!Array.isArray(l) || l.some((r) => typeof r !== "string"))
      throw invalid(`network.${key} must be a list of strings`, l);
    if (l.length > MAX_RULES) throw invalid(`network.${key} has ${l.length} rules; at most ${MAX_RULES}`, l.length);
    const out = (l as string[]).map((r) => normalizeRule(r));
    return [...new Set(out)];
  };
  const policy: NetworkPolicy = { egress, allow_out: list("allow_out"), deny_out: list("deny_out") };
  parsePolicy(policy);
  return policy;
}

function normalizeRule(r: string): string {
  return r
    .trim()
    .toLowerCase()
    .replace(/\.(?=:|$)/, "");
}

export function parsePolicy(p: NetworkPolicy): ParsedPolicy {
  return { egress: p.egress, allow: p.allow_out.map(parseRule), deny: p.deny_out.map(parseRule) };
}

/** One rule: `cidr[:port]`, `address[:port]`, `name[:port]`, `*.suffix[:port]`. */
export function parseRule(raw: string): Rule {
  const r = normalizeRule(raw);
  if (r.includes("[") || net.isIPv6(r))
    throw invalid(`IPv6 rules are not supported (guests have IPv4 only): ${raw}`, raw);
  let host = r;
  let port: number | undefined;
  const colon = r.lastIndexOf(":");
  if (colon >= 0) {
    host = r.slice(0, colon);
    const p = r.slice(colon + 1);
    if (!/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535) throw invalid(`bad port in rule ${raw}`, raw);
    port = Number(p);
  }
  const withPort = port === undefined ? {} : { port };
  const slash = host.indexOf("/");
  if (slash >= 0 || net.isIPv4(host)) {
    const addr = slash >= 0 ? host.slice(0, slash) : host;
    const prefixText = slash >= 0 ? host.slice(slash + 1) : "32";
    if (!net.isIPv4(addr) || !/^\d{1,2}$/.test(prefixText) || Number(prefixText) > 32) {
      throw invalid(`bad CIDR in rule ${raw}`, raw);
    }
    return { kind: "cidr", cidr: networkOf({ addr, prefix: Number(prefixText) }), ...withPort };
  }
  const wildcard = host.startsWith("*.");
  const name = wildcard ? host.slice(2) : host;
  // A numeric last label is a mistyped address, never a name (no top-level domain is numeric).
  if (!NAME_RE.test(name) || !name.includes(".") || /\.\d+$/.test(name)) {
    throw invalid(`bad name in rule ${raw} (want a.b.c or *.b.c)`, raw);
  }
  return { kind: "name", name, wildcard, ...withPort };
}

export function ipToInt(ip: string): number {
  return ip.split(".").reduce((n, o) => n * 256 + Number(o), 0);
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

/** The range's own first address (host bits cleared). */
export function networkOf(c: Cidr): Cidr {
  const size = 2 ** (32 - c.prefix);
  return { addr: intToIp(Math.floor(ipToInt(c.addr) / size) * size), prefix: c.prefix };
}

export function parseCidr(text: string): Cidr {
  const [addr = "", prefix = "32"] = text.split("/");
  return { addr, prefix: Number(prefix) };
}

export function cidrText(c: Cidr): string {
  return `${c.addr}/${c.prefix}`;
}

export function inCidr(ip: string, c: Cidr): boolean {
  const size = 2 ** (32 - c.prefix);
  return Math.floor(ipToInt(ip) / size) === Math.floor(ipToInt(c.addr) / size);
}

/** Whether a DNS name matches a name rule: exact, or `*.suffix` for any name below suffix (not suffix itself). */
export function nameMatches(rule: { name: string; wildcard: boolean }, name: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, "");
  return rule.wildcard ? n.endsWith(`.${rule.name}`) : n === rule.name;
}

/**
 * What the resolver does with a query for `name`: refuse it, or answer it and
 * pin its addresses for the ports a rule names (undefined: any port).
 */
export function nameVerdict(p: ParsedPolicy, name: string): { allowed: false } | { allowed: true; ports?: number[] } {
  const hits = (rules: Rule[]) =>
    rules.filter((r): r is Extract<Rule, { kind: "name" }> => r.kind === "name" && nameMatches(r, name));
  // A deny rule with a port only closes that port (kernel rules on pinned addresses would need the
  // name; the resolver cannot express "all ports but one"), so only port-less denies refuse the name.
  if (hits(p.deny).some((r) => r.port === undefined)) return { allowed: false };
  const allows = hits(p.allow);
  if (allows.length > 0) {
    if (allows.some((r) => r.port === undefined)) return { allowed: true };
    return { allowed: true, ports: [...new Set(allows.map((r) => r.port as number))] };
  }
  // Under egress allow every other name resolves; its addresses need no pin (egress is open).
  if (p.egress === "allow") return { allowed: true, ports: [] };
  return { allowed: false };
}

export const DEFAULT_POLICY: NetworkPolicy = { egress: "deny", allow_out: [], deny_out: [] };
