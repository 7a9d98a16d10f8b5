// Spend caps (docs/decisions/0005-spend-caps.md), on by default: how many
// sandboxes, how much guest RAM in total, how many children per fork, how
// long a sandbox may live, how many streams a sandbox may have open. Every
// check runs before anything is reserved, so a refused request creates nothing.

import os from "node:os";
import { MitosError } from "./errors.js";

export interface Limits {
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
  maxSandboxes: "max_sandboxes",
  maxGuestMemoryMib: "max_guest_memory_mib",
  maxForkCount: "max_fork_count",
  maxLifetimeSeconds: "max_lifetime_seconds",
  defaultTimeoutSeconds: "default_timeout_seconds",
  maxStreamsPerSandbox: "max_streams_per_sandbox",
} as const satisfies Record<keyof Limits, string>;

/** Share of host RAM the guests' nominal memory may add up to. */
export const GUEST_MEMORY_SHARE = 0.75;
/** Share of host RAM for the VMMs' own memory (QEMU private pages, TCG code cache). */
export const VMM_MEMORY_SHARE = 0.2;
/** Host memory one QEMU process needs besides guest RAM (measured 37 MiB under TCG, rounded up). */
export const VMM_ESTIMATE_MIB = 64;

/**
 * Defaults from the host's RAM: guests' nominal memory ≤ 75 %, and one VMM
 * estimate per sandbox ≤ 20 %, so even if every guest dirties all its RAM the
 * host keeps about 5 % for itself and mitosd.
 */
export function defaultLimits(hostMemBytes: number = os.totalmem()): Limits {
  const hostMib = Math.floor(hostMemBytes / (1024 * 1024));
  return {
    maxSandboxes: Math.max(1, Math.floor((hostMib * VMM_MEMORY_SHARE) / VMM_ESTIMATE_MIB)),
    maxGuestMemoryMib: Math.max(128, Math.floor(hostMib * GUEST_MEMORY_SHARE)),
    maxForkCount: 64,
    maxLifetimeSeconds: 3600,
    defaultTimeoutSeconds: 300,
    maxStreamsPerSandbox: 64,
  };
}

/** Defaults with `overrides` applied; throws invalid_input naming a bad value. */
export function resolveLimits(overrides: Partial<Limits> = {}, hostMemBytes?: number): Limits {
  const limits: Limits = { ...defaultLimits(hostMemBytes) };
  for (const [key, value] of Object.entries(overrides) as Array<[keyof Limits, unknown]>) {
    if (value === undefined) continue;
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
    limits[key] = value;
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

/** What live sandboxes hold right now. */
export interface Usage {
  sandboxes: number;
  guestMemoryMib: number;
}

export class SpendCaps {
  private readonly streams = new Map<string, number>();

  constructor(readonly limits: Limits) {}

  /** Refuses `count` new sandboxes of `memMib` each unless all of them fit (never a partial admit). */
  admit(usage: Usage, count: number, memMib: number): void {
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

  /** A new deadline `seconds` from now must stay within the sandbox's lifetime. */
  checkDeadline(createdAtMs: number, seconds: number, nowMs: number = Date.now()): void {
    const max = this.limits.maxLifetimeSeconds;
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

function quota(limit: string, value: number, message: string, remediation: string): MitosError {
  return new MitosError("quota_exceeded", message, { remediation, context: { limit, value } });
}
