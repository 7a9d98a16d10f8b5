// The resolver every networked guest uses (its only DNS: the namespace
// redirects port 53 on the gateway here and refuses every other DNS). It
// answers a name only if the sandbox's policy allows it, and before
// answering pins the addresses into that sandbox's ruleset, so an allowed
// name is reachable exactly at the addresses it resolved to. Refused names
// get NXDOMAIN (glibc does not fail fast on REFUSED); private and reserved
// answers are dropped (DNS rebinding) unless an allow CIDR names them;
// AAAA gets an empty answer (guests have no IPv6).

import dgram from "node:dgram";
import net from "node:net";
import dnsPacket from "dns-packet";
import {
  ALWAYS_DENIED,
  inCidr,
  nameVerdict,
  type ParsedPolicy,
  PRIVATE_RANGES,
  parseCidr,
  type Rule,
} from "./policy.js";
import type { Pin } from "./ruleset.js";

const RCODE_NXDOMAIN = 3;
const RCODE_SERVFAIL = 2;
const UPSTREAM_TIMEOUT_MS = 2000;
const MAX_TCP_QUERY = 4096;

/** Who asked: the sandbox behind a source address, its policy, and how to pin answers for it. */
export interface Asker {
  policy: ParsedPolicy;
  pin(pins: Pin[], name: string): Promise<void>;
}

export interface ResolverOptions {
  /** Upstream servers, `ip` or `ip:port`. */
  upstream: string[];
  /** The sandbox a query's source address belongs to (undefined: not a sandbox, ignored). */
  askerOf(source: string): Asker | undefined;
  log(msg: string, fields?: Record<string, unknown>): void;
  /** Port to listen on (0: any free one). */
  port?: number;
}

const REFUSED_RANGES = [...ALWAYS_DENIED, ...PRIVATE_RANGES].map(parseCidr);

export class Resolver {
  private udp: dgram.Socket | undefined;
  private tcp: net.Server | undefined;
  port = 0;

  constructor(private readonly o: ResolverOptions) {}

  async listen(): Promise<void> {
    const udp = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind(this.o.port ?? 0, "0.0.0.0", () => resolve());
    });
    udp.on("error", (err) => this.o.log("resolver socket error", { error: err.message }));
    this.port = udp.address().port;
    udp.on("message", (msg, rinfo) => {
      void this.answer(msg, rinfo.address).then((reply) => {
        if (reply) udp.send(reply, rinfo.port, rinfo.address);
      });
    });
    this.udp = udp;
    // The same port over TCP (clients retry there after a truncated answer).
    const tcp = net.createServer((sock) => this.serveTcp(sock));
    await new Promise<void>((resolve, reject) => {
      tcp.once("error", reject);
      tcp.listen(this.port, "0.0.0.0", () => resolve());
    });
    this.tcp = tcp;
  }

  close(): void {
    this.udp?.close();
    this.tcp?.close();
  }

  private serveTcp(sock: net.Socket): void {
    const source = sock.remoteAddress?.replace(/^::ffff:/, "") ?? "";
    if (!this.o.askerOf(source)) return void sock.destroy();
    sock.setTimeout(10_000, () => sock.destroy());
    let buf = Buffer.alloc(0);
    sock.on("error", () => {});
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MAX_TCP_QUERY + 2) return void sock.destroy();
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + msg.length);
        void this.answer(Buffer.from(msg), source).then((reply) => {
          if (!reply || sock.destroyed) return;
          const len = Buffer.alloc(2);
          len.writeUInt16BE(reply.length);
          sock.write(Buffer.concat([len, reply]));
        });
      }
    });
  }

  /** The reply to one query from `source` (undefined: drop it). */
  async answer(msg: Buffer, source: string): Promise<Buffer | undefined> {
    const asker = this.o.askerOf(source);
    if (!asker) return undefined;
    let q: dnsPacket.DecodedPacket;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    const question = q.questions?.[0];
    if (q.type !== "query" || !question || (q.questions?.length ?? 0) !== 1) return undefined;
    const reply = (rcode: number, answers: dnsPacket.Answer[] = []) =>
      dnsPacket.encode({
        type: "response",
        id: q.id ?? 0,
        flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
        questions: [question],
        answers,
      });
    const verdict = nameVerdict(asker.policy, question.name);
    if (!verdict.allowed) return reply(RCODE_NXDOMAIN);
    if (question.type === "AAAA") return reply(0);
    let upstream: dnsPacket.DecodedPacket;
    try {
      upstream = await this.forward(msg);
    } catch (err) {
      this.o.log("resolver: upstream failed", { name: question.name, error: (err as Error).message });
      return reply(RCODE_SERVFAIL);
    }
    const answers = (upstream.answers ?? []).filter(
      (a) => a.type !== "A" || allowedAnswer(asker.policy, (a as { data: string }).data),
    );
    const pins: Pin[] = [];
    for (const a of answers) {
      if (a.type !== "A") continue;
      const ip = (a as { data: string }).data;
      const ttl = (a as { ttl?: number }).ttl ?? 0;
      if (verdict.ports === undefined) pins.push({ ip, ttl });
      else for (const port of verdict.ports) pins.push({ ip, port, ttl });
    }
    if (pins.length > 0) {
      try {
        await asker.pin(pins, question.name);
      } catch (err) {
        this.o.log("resolver: pinning failed", { name: question.name, error: (err as Error).message });
        return reply(RCODE_SERVFAIL);
      }
    }
    const upstreamRcode = (upstream.flags ?? 0) & 0xf;
    const rcode = upstreamRcode === RCODE_NXDOMAIN || upstreamRcode === 0 ? upstreamRcode : RCODE_SERVFAIL;
    return reply(rcode, answers);
  }

  /** Asks the upstream servers in turn (UDP). */
  private async forward(msg: Buffer): Promise<dnsPacket.DecodedPacket> {
    if (this.o.upstream.length === 0)
      throw new Error("no upstream DNS server (none in /etc/resolv.conf or --dns-upstream)");
    let last: Error = new Error("no answer");
    for (const server of this.o.upstream) {
      const [host = "", port = "53"] = server.split(":");
      try {
        return dnsPacket.decode(await udpQuery(msg, host, Number(port)));
      } catch (err) {
        last = err as Error;
      }
    }
    throw last;
  }
}

/** Private and reserved answers are dropped unless an allow CIDR covers them (rebinding). */
function allowedAnswer(policy: ParsedPolicy, ip: string): boolean {
  if (!REFUSED_RANGES.some((c) => inCidr(ip, c))) return true;
  return policy.allow.some((r: Rule) => r.kind === "cidr" && inCidr(ip, r.cidr));
}

function udpQuery(msg: Buffer, host: string, port: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket(net.isIPv6(host) ? "udp6" : "udp4");
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`${host}:${port} did not answer in ${UPSTREAM_TIMEOUT_MS} ms`));
    }, UPSTREAM_TIMEOUT_MS);
    sock.once("message", (reply) => {
      clearTimeout(timer);
      sock.close();
      resolve(reply);
    });
    sock.once("error", (err) => {
      clearTimeout(timer);
      sock.close();
      reject(err);
    });
    sock.send(msg, port, host);
  });
}

/** Nameservers from the host's resolv.conf. */
export function systemResolvers(text: string): string[] {
  return [...text.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) => m[1] as string).filter((ip) => net.isIPv4(ip));
}
