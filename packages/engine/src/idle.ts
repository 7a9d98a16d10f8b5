// Automatic hibernation (docs/checkpoints.md): a sandbox that no API call has
// touched for the configured idle time, with no stream open, is hibernated
// (its RAM saved to a checkpoint, its VM stopped); the next runtime call to
// it wakes it first.

import type { Log } from "./context.js";
import type { Sandbox, SandboxTable } from "./lifecycle.js";

export class IdleHibernation {
  private readonly timer: NodeJS.Timeout;
  /** Hibernations in flight, so a call arriving meanwhile waits for it and then wakes the sandbox. */
  private readonly inFlight = new Map<string, Promise<void>>();
  private scanning = false;

  constructor(
    private readonly table: SandboxTable,
    private readonly idleMs: number,
    private readonly hibernate: (s: Sandbox) => Promise<void>,
    private readonly log: Log,
  ) {
    // Often enough that a sandbox sleeps within a quarter of its idle time after it.
    this.timer = setInterval(() => void this.scan(), Math.min(30_000, Math.max(250, idleMs / 4)));
    this.timer.unref();
  }

  /** Waits for a hibernation of `id` that is under way, if any. */
  async settle(id: string): Promise<void> {
    await this.inFlight.get(id);
  }

  stop(): Promise<unknown> {
    clearInterval(this.timer);
    return Promise.allSettled([...this.inFlight.values()]);
  }

  private async scan(): Promise<void> {
    if (this.scanning) return;
    this.scanning = true;
    try {
      for (const s of [...this.table.values()]) {
        if (s.state !== "ready" || !s.vm || s.streams > 0 || Date.now() - s.lastActive < this.idleMs) continue;
        const p = this.hibernate(s).then(
          () => {
            s.idleHibernated = true;
            this.table.persist(s);
            this.log("hibernated after being idle", { sandbox: s.id, idle_ms: this.idleMs, checkpoint: s.hibernation });
          },
          (err: Error) => {
            // Not retried at once: it waits out another idle period.
            s.lastActive = Date.now();
            this.log("could not hibernate an idle sandbox", { sandbox: s.id, error: err.message });
          },
        );
        this.inFlight.set(s.id, p);
        await p;
        this.inFlight.delete(s.id);
      }
    } finally {
      this.scanning = false;
    }
  }
}
