// Spend caps (docs/decisions/0005-spend-caps.md), on by default: how many
// sandboxes, how much guest RAM in total, how many children per fork, how
// long a sandbox may live, how many streams a sandbox may have open; and
// CoW-aware admission (decision 0021): what sandboxes really use plus what a
// new one is expected to cost must leave a floor of host memory free. Every
// check runs before anything is reserved, so a refused request creates nothing.

import os from "node:os";
import { MitosError } from "./errors.js";

/** "cow": admission counts real use (decision 0021); "strict": nominal guest RAM only, ≤ 75 % of the host. */
export type Admission = "cow" | "strict";

export interface Limits {
  /** How memory is admitted: real use with a free-memory floor, or nominal RAM. */
  admission: Admission;
  /** cow: host memory that must stay available after what a request is expected to take. */
  memoryFloorMib: number;
  /** cow: how many times host RAM the guests' nominal memory may add up to (the default max_guest_memory_mib). */
  memoryOvercommit: number;
  /** Live sandboxes (starting, ready, paused). */
  maxSandboxes: number;
  /** Sum of mem_size_mib over live sandboxes. */
  maxGuestMemoryMib: number;
  /** Children per fork request. */
  maxForkCount: number;
  /** A sandbox's whole life, set_timeout extensions included (created_at + this). */
  maxLifetimeSeconds: number;
  /** Deadline of a sandbox created without timeout_seconds. */
  defaultTimeoutSeconds: number;
  /** Concurrent exec and file streams per sandbox. */
  maxStreamsPerSandbox: number;
}

/** The config-file / wire names of the limits (snake_case, as in the API). */
export const LIMIT_NAMES = {
  admission: "admission",
  memoryFloorMib: "memory_floor_mib",
  memoryOvercommit: "memory_overcommit",
  maxSandboxes: "max_sandboxes",
  maxGuestMemoryMib: "max_guest_memory_mib",
  maxForkCount: "max_fork_count",
  maxLifetimeSeconds: "max_lifetime_seconds",
  defaultTimeoutSeconds: "default_timeout_seconds",
  maxStreamsPerSandbox: "max_streams_per_sandbox",
} as const satisfies Record<keyof Limits, string>;

/**
 * Caps of one owner (a tenant's key scope), checked beside the host's; an
 * unset one is not checked. A sandbox's owner is a label its creator gives
 * (SandboxInfo.owner) and its forks inherit.
 */
export interface OwnerLimits {
  maxSandboxes?: number;
  maxGuestMemoryMib?: number;
  maxForkCount?: number;
  maxLifetimeSeconds?: number;
}

export const OWNER_LIMIT_NAMES = {
  maxSandboxes: "max_sandboxes",
  maxGuestMemoryMib: "max_guest_memory_mib",
  maxForkCount: "max_fork_count",
  maxLifetimeSeconds: "max_lifetime_seconds",
} as const satisfies Record<keyof OwnerLimits, string>;

/** strict: share of host RAM the guests' nominal memory may add up to. */
export const GUEST_MEMORY_SHARE = 0.75;
/** strict: share of host RAM for the VMMs' own memory (QEMU private pages, TCG code cache). */
export const VMM_MEMORY_SHARE = 0.2;
/** Host memory one QEMU process needs besides guest RAM (measured 37 MiB under TCG, rounded up). */
export const VMM_ESTIMATE_MIB = 64;
/** cow: the fewest MiB one sandbox really takes (its QEMU alone is more), which bounds max_sandboxes. */
export const MIN_SANDBOX_MIB = 32;
/** cow: default overcommit of nominal guest RAM (500 python children of 512 MiB fit on 24 GiB). */
export const DEFAULT_OVERCOMMIT = 12;
/** cow: default floor, 5 % of host RAM and at least this. */
export const MIN_FLOOR_MIB = 512;

/**
 * Defaults from the host's RAM. cow (the default): guests' nominal memory up
 * to `overcommit` × host RAM, as many sandboxes as could each take
 * MIN_SANDBOX_MIB, a floor of 5 % of host RAM kept free; real use decides.
 * strict: nominal memory ≤ 75 %, one VMM estimate per sandbox ≤ 20 %, so even
 * if every guest dirties all its RAM the host keeps about 5 % for itself.
 */
export function defaultLimits(
  hostMemBytes: number = os.totalmem(),
  admission: Admission = "cow",
  overcommit: number = DEFAULT_OVERCOMMIT,
): Limits {
  const hostMib = Math.floor(hostMemBytes / (1024 * 1024));
  const cow = admission === "cow";
  return {
    admission,
    memoryFloorMib: Math.max(MIN_FLOOR_MIB, Math.floor(hostMib * 0.05)),
    memoryOvercommit: overcommit,
    maxSandboxes: Math.max(
      1,
      Math.floor(cow ? hostMib / MIN_SANDBOX_MIB : (hostMib * VMM_MEMORY_SHARE) / VMM_ESTIMATE_MIB),
    ),
    maxGuestMemoryMib: Math.max(128, Math.floor(hostMib * (cow ? overcommit : GUEST_MEMORY_SHARE))),
    maxForkCount: 64,
    maxLifetimeSeconds: 3600,
    defaultTimeoutSeconds: 300,
    maxStreamsPerSandbox: 64,
  };
}

/** Defaults with `overrides` applied; throws invalid_input naming a bad value. */
export function resolveLimits(overrides: Partial<Limits> = {}, hostMemBytes?: number): Limits {
  const admission = overrides.admission ?? "cow";
  if (admission !== "cow" && admission !== "strict") {
    throw new MitosError("invalid_input", `admission must be "cow" or "strict", got ${JSON.stringify(admission)}`, {
      remediation: 'Use "cow" (count what sandboxes really use) or "strict" (count nominal guest RAM).',
      context: { limit: "admission" },
    });
  }
  const overcommit = overrides.memoryOvercommit ?? DEFAULT_OVERCOMMIT;
  if (typeof overcommit !== "number" || !Number.isFinite(overcommit) || overcommit < 1 || overcommit > 1000) {
    throw new MitosError(
      "invalid_input",
      `memory_overcommit must be a number from 1 to 1000, got ${JSON.stringify(overcommit)}`,
      {
        remediation:
          "Set memory_overcommit to how many times host RAM the guests' nominal memory may add up to (e.g. 12).",
        context: { limit: "memory_overcommit" },
      },
    );
  }
  const limits: Limits = { ...defaultLimits(hostMemBytes, admission, overcommit) };
  for (const [key, value] of Object.entries(overrides) as Array<[keyof Limits, unknown]>) {
    if (value === undefined || key === "admission" || key === "memoryOvercommit") continue;
    const name = LIMIT_NAMES[key];
    if (!name) {
      throw new MitosError("invalid_input", `unknown limit ${JSON.stringify(key)}`, {
        remediation: `Known limits: ${Object.values(LIMIT_NAMES).join(", ")}.`,
      });
    }
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
      throw new MitosError("invalid_input", `${name} must be a positive whole number, got ${JSON.stringify(value)}`, {
        remediation: `Set ${name} to a whole number of at least 1.`,
        context: { limit: name },
      });
    }
    (limits as unknown as Record<string, number>)[key] = value;
  }
  if (limits.defaultTimeoutSeconds > limits.maxLifetimeSeconds) {
    throw new MitosError(
      "invalid_input",
      `default_timeout_seconds ${limits.defaultTimeoutSeconds} is above max_lifetime_seconds ${limits.maxLifetimeSeconds}`,
      { remediation: "Make the default deadline at most the maximum lifetime." },
    );
  }
  return limits;
}

/** Host memory as CoW-aware admission sees it (memory-use.ts), in MiB. */
export interface MemoryUse {
  /** The host's RAM (MemTotal). */
  totalMib: number;
  /** What the host could still hand out (MemAvailable). */
  availableMib: number;
  /** What settled sandboxes really hold: their QEMUs' private pages plus every shared base once. */
  committedMib: number;
  /** Reservations of sandboxes too new to measure (each its template's learnt cost). */
  pendingMib: number;
}

/** What live sandboxes hold right now. */
export interface Usage {
  sandboxes: number;
  guestMemoryMib: number;
  /** cow admission only: real memory figures. */
  memory?: MemoryUse;
}

export class SpendCaps {
  private readonly streams = new Map<string, number>();

  constructor(
    readonly limits: Limits,
    /** An owner's own caps (a tenant's), if it has any. */
    readonly ownerLimits: (owner: string) => OwnerLimits | undefined = () => undefined,
  ) {}

  /**
   * Refuses `count` new sandboxes of `memMib` each for `owner` unless all fit
   * its own caps; `usage` is what the owner holds now (creates in flight included).
   */
  admitOwner(owner: string, usage: Usage, count: number, memMib: number): void {
    const l = this.ownerLimits(owner);
    if (!l) return;
    const who = `owner ${owner}`;
    if (l.maxForkCount !== undefined && count > l.maxForkCount) {
      throw quota(
        "owner.max_fork_count",
        l.maxForkCount,
        `count ${count} is above ${who}'s max_fork_count ${l.maxForkCount}`,
        `Fork at most ${l.maxForkCount} children per request, or ask an admin to raise this key's max_fork_count.`,
      );
    }
    if (l.maxSandboxes !== undefined && usage.sandboxes + count > l.maxSandboxes) {
      throw quota(
        "owner.max_sandboxes",
        l.maxSandboxes,
        `${count} more sandbox${count === 1 ? "" : "es"} would exceed ${who}'s max_sandboxes ${l.maxSandboxes} (${usage.sandboxes} live)`,
        "Terminate sandboxes of this key you no longer need, or ask an admin to raise its max_sandboxes.",
      );
    }
    if (l.maxGuestMemoryMib !== undefined && usage.guestMemoryMib + count * memMib > l.maxGuestMemoryMib) {
      throw quota(
        "owner.max_guest_memory_mib",
        l.maxGuestMemoryMib,
        `${count} × ${memMib} MiB more guest memory would exceed ${who}'s max_guest_memory_mib ${l.maxGuestMemoryMib} (${usage.guestMemoryMib} MiB live)`,
        "Terminate sandboxes of this key, use a smaller template, or ask an admin to raise its max_guest_memory_mib.",
      );
    }
  }

  /** The longest a sandbox of `owner` may live: the host's cap, or the owner's when lower. */
  maxLifetime(owner: string | undefined): number {
    const own = owner === undefined ? undefined : this.ownerLimits(owner)?.maxLifetimeSeconds;
    return Math.min(this.limits.maxLifetimeSeconds, own ?? Number.POSITIVE_INFINITY);
  }

  /**
   * Refuses `count` new sandboxes of `memMib` each unless all of them fit (never
   * a partial admit). With cow admission and `usage.memory`, each new one is
   * expected to take `reservationMib` of host memory.
   */
  admit(usage: Usage, count: number, memMib: number, reservationMib = 0): void {
    this.checkForkCount(count);
    const l = this.limits;
    if (usage.sandboxes + count > l.maxSandboxes) {
      throw quota(
        "max_sandboxes",
        l.maxSandboxes,
        `${count} more sandbox${count === 1 ? "" : "es"} would exceed max_sandboxes ${l.maxSandboxes} (${usage.sandboxes} live)`,
        "Terminate sandboxes you no longer need, or raise --max-sandboxes.",
      );
    }
    if (usage.guestMemoryMib + count * memMib > l.maxGuestMemoryMib) {
      throw quota(
        "max_guest_memory_mib",
        l.maxGuestMemoryMib,
        `${count} × ${memMib} MiB more guest memory would exceed max_guest_memory_mib ${l.maxGuestMemoryMib} (${usage.guestMemoryMib} MiB live)`,
        "Terminate sandboxes, use a template with less memory, or raise --max-guest-memory-mib.",
      );
    }
    if (l.admission === "cow" && usage.memory) this.admitMemory(usage.memory, count, reservationMib);
  }

  /** cow: after `count` × `reservationMib` more, the host keeps memory_floor_mib, by our count and by the kernel's. */
  private admitMemory(m: MemoryUse, count: number, reservationMib: number): void {
    const floor = this.limits.memoryFloorMib;
    const need = Math.ceil(count * reservationMib);
    const ask = `${count} sandbox${count === 1 ? "" : "es"} expected to take ${Math.ceil(reservationMib)} MiB each`;
    const remediation =
      "Terminate or hibernate sandboxes you are not using (POST /v1/pause with hibernate: true), fork fewer children, " +
      "or lower memory_floor_mib if the host can spare it.";
    const ours = m.committedMib + m.pendingMib;
    if (ours + need > m.totalMib - floor) {
      throw quota(
        "memory_floor_mib",
        floor,
        `${ask} would leave less than memory_floor_mib ${floor} MiB of the host's ${m.totalMib} MiB (sandboxes use ${Math.round(m.committedMib)} MiB, ${Math.round(m.pendingMib)} MiB reserved for ones starting)`,
        remediation,
        { needed_mib: need, committed_mib: Math.round(m.committedMib), pending_mib: Math.round(m.pendingMib) },
      );
    }
    if (m.availableMib - m.pendingMib - need < floor) {
      throw quota(
        "memory_floor_mib",
        floor,
        `${ask} would leave less than memory_floor_mib ${floor} MiB available on the host (${Math.round(m.availableMib)} MiB available, ${Math.round(m.pendingMib)} MiB reserved for ones starting)`,
        remediation,
        { needed_mib: need, available_mib: Math.round(m.availableMib), pending_mib: Math.round(m.pendingMib) },
      );
    }
  }

  checkForkCount(count: number): void {
    if (count > this.limits.maxForkCount) {
      throw quota(
        "max_fork_count",
        this.limits.maxForkCount,
        `count ${count} is above max_fork_count ${this.limits.maxForkCount}`,
        `Fork at most ${this.limits.maxForkCount} children per request; fork again for more.`,
      );
    }
  }

  /** A new deadline `seconds` from now must stay within the sandbox's lifetime (its owner's, when shorter). */
  checkDeadline(createdAtMs: number, seconds: number, nowMs: number = Date.now(), owner?: string): void {
    const max = this.maxLifetime(owner);
    const endMs = createdAtMs + max * 1000;
    if (nowMs + seconds * 1000 > endMs) {
      const left = Math.max(0, Math.floor((endMs - nowMs) / 1000));
      throw new MitosError(
        "timeout_too_large",
        `timeout ${seconds}s would run past the sandbox's maximum lifetime of ${max}s (${left}s left)`,
        {
          remediation: `Ask for at most ${left} seconds; a sandbox lives at most ${max}s from its creation (max_lifetime_seconds).`,
          context: { limit: "max_lifetime_seconds", value: max, seconds_left: left },
        },
      );
    }
  }

  /** Takes one stream slot of a sandbox; call the returned function once when the stream ends. */
  openStream(sandboxId: string): () => void {
    const n = this.streams.get(sandboxId) ?? 0;
    const max = this.limits.maxStreamsPerSandbox;
    if (n >= max) {
      throw new MitosError("too_many_streams", `sandbox ${sandboxId} already has ${n} open streams (max ${max})`, {
        remediation: "Wait for running execs or file transfers to finish, or raise --max-streams-per-sandbox.",
        context: { limit: "max_streams_per_sandbox", value: max, sandbox: sandboxId },
      });
    }
    this.streams.set(sandboxId, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.streams.get(sandboxId) ?? 1) - 1;
      if (left <= 0) this.streams.delete(sandboxId);
      else this.streams.set(sandboxId, left);
    };
  }

  openStreams(sandboxId: string): number {
    return this.streams.get(sandboxId) ?? 0;
  }
}

function quota(
  limit: string,
  value: number,
  message: string,
  remediation: string,
  more: Record<string, number> = {},
): MitosError {
  return new MitosError("quota_exceeded", message, { remediation, context: { limit, value, ...more } });
}
