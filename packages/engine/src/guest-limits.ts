// What a sandbox's commands may take of their guest (docs/security.md
// "Hostile guests"): set on the kernel command line when a template boots,
// applied by the guest's init (the writable layer's size) and agent (the
// commands' cgroup: guest/agent/src/limits.c), and kept by the guest through
// every restore and fork. The output rate is the host's (agent/client.ts).

import { MitosError } from "./errors.js";

/**
 * Limits of a sandbox's guest, set when its template boots (the guest keeps
 * them through every restore and fork). Unset: the guest's defaults.
 */
export interface GuestLimits {
  /** Memory all commands together may use (MiB; default: guest RAM less max(64 MiB, an eighth)). */
  commandMemoryMib?: number;
  /** Processes all commands together may have (default 1024). */
  commandPids?: number;
  /** Size of the RAM-backed writable layer (MiB; default: half of guest RAM). */
  writableMib?: number;
  /** Exec output the host takes from the sandbox per second (bytes; default 32 MiB); more waits in the guest. */
  outputBytesPerSecond?: number;
}

/** The kernel command line that sets a template's guest limits at boot (guest/agent/src/limits.c, guest/image/init). */
export function guestLimitArgs(g: GuestLimits | undefined): string[] {
  return [
    ...(g?.commandMemoryMib !== undefined ? [`mitos.cmd_mem=${g.commandMemoryMib}`] : []),
    ...(g?.commandPids !== undefined ? [`mitos.cmd_pids=${g.commandPids}`] : []),
    ...(g?.writableMib !== undefined ? [`mitos.upper_size=${g.writableMib}m`] : []),
  ];
}

/** The limits a template asked for, checked against its guest RAM; throws invalid_input naming the field. */
export function checkGuestLimits(g: GuestLimits | undefined, memMiB: number): GuestLimits | undefined {
  if (g === undefined) return undefined;
  const ranges: Record<keyof GuestLimits, [number, number, string, string]> = {
    commandMemoryMib: [32, memMiB, "command_memory_mib", `32 to the template's mem_size_mib (${memMiB})`],
    commandPids: [16, 4_194_304, "command_pids", "16 to 4194304"],
    writableMib: [16, memMiB, "writable_mib", `16 to the template's mem_size_mib (${memMiB})`],
    outputBytesPerSecond: [65_536, 1 << 30, "output_bytes_per_second", "65536 to 1073741824"],
  };
  const out: GuestLimits = {};
  for (const [key, value] of Object.entries(g) as Array<[keyof GuestLimits, unknown]>) {
    const range = ranges[key];
    if (!range) {
      throw new MitosError("invalid_input", `unknown guest limit ${JSON.stringify(key)}`, {
        remediation: `Known guest limits: ${Object.values(ranges)
          .map((r) => r[2])
          .join(", ")}.`,
        context: { field: `guest.${key}` },
      });
    }
    if (value === undefined) continue;
    const [lo, hi, wire, text] = range;
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < lo || value > hi) {
      throw new MitosError(
        "invalid_input",
        `guest.${wire} must be a whole number from ${text}, got ${JSON.stringify(value)}`,
        {
          remediation: `Set guest.${wire} to ${text}, or leave it out for the default (docs/security.md).`,
          context: { field: `guest.${wire}` },
        },
      );
    }
    out[key] = value;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}
