// Networking for the engine: a slot per networked VM (slots.ts), its
// policy turned into the namespace's ruleset (ruleset.ts), the resolver's
// pins kept so a policy change or a fork can carry them, and the host set
// up once (host.ts). Slots are claimed in a host-wide registry that is also
// the journal: a restarted engine keeps the slots of the VMs it re-adopts
// and removes the rest.

import fs from "node:fs";
import { MitosError } from "../errors.js";
import { hostAddresses, setupHost } from "./host.js";
import { cidrText, DEFAULT_POLICY, type NetworkPolicy, type ParsedPolicy, parsePolicy } from "./policy.js";
import { Resolver, systemResolvers } from "./resolver.js";
import { changePins, PIN_FLOOR_SECONDS, type Pin, ruleset, type SlotAddressing } from "./ruleset.js";
import { nftIn, type Slot, Slots } from "./slots.js";

export interface NetworkOptions {
  dataDir: string;
  /** Slot range (default 10.201.0.0/16). */
  range?: string;
  /** Claim registry (default /run/mitos/net-slots). */
  registry?: string;
  /** Upstream DNS servers (`ip[:port]`); default: the host's resolv.conf. */
  upstream?: string[];
  log: (msg: string, fields?: Record<string, unknown>) => void;
}

interface Attached {
  slot: Slot;
  policy: NetworkPolicy;
  parsed: ParsedPolicy;
  /** Pinned answers: key ip or ip:port → expiry (ms since epoch). */
  pins: Map<string, { pin: Pin; until: number }>;
  /** Serializes ruleset updates of this slot. */
  queue: Promise<unknown>;
}

export class Network {
  readonly slots: Slots;
  private readonly byVm = new Map<string, Attached>();
  private readonly bySource = new Map<string, Attached>();
  private resolver: Resolver | undefined;
  private ready: Promise<void> | undefined;
  private denied: string[] = [];
  private sweeper: NodeJS.Timeout | undefined;
  private readonly removing = new Set<Promise<void>>();

  constructor(private readonly o: NetworkOptions) {
    this.slots = new Slots(o.dataDir, o.range, o.registry);
  }

  /** Host setup and the resolver, once, on first use (a mitosd without networked sandboxes touches nothing). */
  private start(): Promise<void> {
    this.ready ??= (async () => {
      if (process.getuid?.() !== 0) {
        throw new MitosError("unavailable", "networked sandboxes need mitosd to run as root", {
          remediation:
            "Run mitosd as root (it creates network namespaces, taps and nftables rules), or create the sandbox without network.",
        });
      }
      await setupHost(this.slots.range, this.o.log);
      this.denied = [...hostAddresses(), cidrText(this.slots.range)];
      const upstream = this.o.upstream ?? systemResolvers(readResolvConf());
      const resolver = new Resolver({
        upstream,
        log: this.o.log,
        askerOf: (source) => {
          const a = this.bySource.get(source);
          return a && { policy: a.parsed, pin: (pins) => this.pin(a, pins) };
        },
      });
      await resolver.listen();
      this.resolver = resolver;
      this.sweeper = setInterval(() => this.sweep(), 15_000);
      this.sweeper.unref();
      this.o.log("network: ready", { range: cidrText(this.slots.range), resolverPort: resolver.port, upstream });
    })();
    this.ready.catch(() => {
      this.ready = undefined;
    });
    return this.ready;
  }

  /** Builds a slot for a VM about to launch, with `policy` (default: deny everything). QEMU's tap is owned by `owner`. */
  async attach(
    vmId: string,
    owner: { uid: number; gid: number } | undefined,
    policy: NetworkPolicy = DEFAULT_POLICY,
  ): Promise<Slot> {
    await this.start();
    const slot = this.slots.claim(vmId);
    const a: Attached = { slot, policy, parsed: parsePolicy(policy), pins: new Map(), queue: Promise.resolve() };
    try {
      await this.slots.create(slot, owner);
      await nftIn(slot, ruleset(a.parsed, this.addressing(slot), []));
    } catch (err) {
      await this.slots.destroy(slot.index).catch(() => {});
      throw new MitosError("unavailable", `could not set up the network of VM ${vmId}: ${(err as Error).message}`, {
        remediation:
          "Check that ip (iproute2), nft (nftables) and nsenter work as root on this host; mitosd's log has the failing command.",
        context: { vm: vmId, netns: slot.netns },
      });
    }
    this.byVm.set(vmId, a);
    this.bySource.set(slot.nsIp, a);
    this.o.log("network: slot up", { vm: vmId, netns: slot.netns, hostIf: slot.hostIf, source: slot.nsIp });
    return slot;
  }

  /** Re-attaches the slot a previous run left for a re-adopted VM; false when there is none. */
  async adopt(vmId: string, index: number, policy: NetworkPolicy): Promise<boolean> {
    await this.start();
    const slot = this.slots.slot(index);
    if (!fs.existsSync(slot.netnsPath)) return false;
    const a: Attached = { slot, policy, parsed: parsePolicy(policy), pins: new Map(), queue: Promise.resolve() };
    this.byVm.set(vmId, a);
    this.bySource.set(slot.nsIp, a);
    // The resolver listens on a new port now: the ruleset must send DNS there.
    await this.setPolicy(vmId, policy);
    return true;
  }

  has(vmId: string): boolean {
    return this.byVm.has(vmId);
  }

  policyOf(vmId: string): NetworkPolicy | undefined {
    return this.byVm.get(vmId)?.policy;
  }

  slotOf(vmId: string): Slot | undefined {
    return this.byVm.get(vmId)?.slot;
  }

  /** Pins still valid, with the seconds they have left (a fork's children inherit them). */
  pinsOf(vmId: string): Pin[] {
    const a = this.byVm.get(vmId);
    if (!a) return [];
    const now = Date.now();
    return [...a.pins.values()].filter((p) => p.until > now).map((p) => ({ ...p.pin, ttl: (p.until - now) / 1000 }));
  }

  /** Replaces a VM's policy (one nft transaction); pins of names the new policy still allows are kept. */
  async setPolicy(vmId: string, policy: NetworkPolicy, inherited: Pin[] = []): Promise<void> {
    const a = this.byVm.get(vmId);
    if (!a) throw new Error(`VM ${vmId} has no network slot`);
    const parsed = parsePolicy(policy);
    for (const p of inherited) this.remember(a, p);
    const run = a.queue.then(async () => {
      a.policy = policy;
      a.parsed = parsed;
      // Pins are of names the old policy allowed; the new one starts clean (the guest re-resolves).
      if (inherited.length === 0) a.pins.clear();
      await nftIn(a.slot, ruleset(parsed, this.addressing(a.slot), this.pinsOf(vmId)));
    });
    a.queue = run.catch(() => {});
    await run;
  }

  /** Removes a VM's slot (its QEMU is gone). */
  detach(vmId: string): Promise<void> {
    const a = this.byVm.get(vmId);
    if (!a) return Promise.resolve();
    this.byVm.delete(vmId);
    this.bySource.delete(a.slot.nsIp);
    const p = (async () => {
      await a.queue;
      await this.slots.destroy(a.slot.index);
      this.o.log("network: slot removed", { vm: vmId, netns: a.slot.netns });
    })();
    this.removing.add(p);
    p.finally(() => this.removing.delete(p)).catch(() => {});
    return p;
  }

  /** Removes every slot of this data dir whose VM is not in `keep` (startup, after re-adoption). */
  async reclaim(keep: Set<string>): Promise<number> {
    let removed = 0;
    await Promise.all(
      [...this.slots.claims()].map(async ([index, vmId]) => {
        if (keep.has(vmId) || this.byVm.has(vmId)) return;
        await this.slots
          .destroy(index)
          .catch((err: Error) => this.o.log("network: reclaim failed", { index, error: err.message }));
        removed++;
      }),
    );
    if (removed > 0) this.o.log("network: removed slots a previous run left", { removed });
    return removed;
  }

  /** Slot claims of this data dir (index → VM id). */
  claims(): Map<number, string> {
    return this.slots.claims();
  }

  /** Waits for slot removals in flight (VMs that just exited), then stops the resolver. */
  async close(): Promise<void> {
    await new Promise((r) => setImmediate(r));
    await Promise.allSettled([...this.removing]);
    if (this.sweeper) clearInterval(this.sweeper);
    this.resolver?.close();
  }

  private addressing(slot: Slot): SlotAddressing {
    return {
      nsIp: slot.nsIp,
      resolverIp: slot.hostIp,
      resolverPort: this.resolver?.port ?? 53,
      extraDenied: this.denied,
    };
  }

  private remember(a: Attached, p: Pin): void {
    const key = p.port === undefined ? p.ip : `${p.ip}:${p.port}`;
    const until = Date.now() + Math.max(PIN_FLOOR_SECONDS, p.ttl) * 1000;
    const prev = a.pins.get(key);
    if (!prev || prev.until < until)
      a.pins.set(key, { pin: { ip: p.ip, ...(p.port !== undefined ? { port: p.port } : {}), ttl: p.ttl }, until });
  }

  private async pin(a: Attached, pins: Pin[]): Promise<void> {
    const fresh = pins.filter((p) => !a.pins.has(p.port === undefined ? p.ip : `${p.ip}:${p.port}`));
    for (const p of pins) this.remember(a, p);
    if (fresh.length === 0) return;
    const run = a.queue.then(() => nftIn(a.slot, changePins("add", fresh)));
    a.queue = run.catch(() => {});
    await run;
  }

  /** Drops expired pins from every slot's ruleset (established connections live on). */
  private sweep(): void {
    const now = Date.now();
    for (const a of this.byVm.values()) {
      const gone = [...a.pins].filter(([, p]) => p.until <= now);
      if (gone.length === 0) continue;
      for (const [k] of gone) a.pins.delete(k);
      const run = a.queue.then(() =>
        nftIn(
          a.slot,
          changePins(
            "delete",
            gone.map(([, p]) => p.pin),
          ),
        ),
      );
      a.queue = run.catch((err: Error) =>
        this.o.log("network: pin sweep failed", { netns: a.slot.netns, error: err.message }),
      );
    }
  }
}

function readResolvConf(): string {
  try {
    return fs.readFileSync("/etc/resolv.conf", "utf8");
  } catch {
    return "";
  }
}
