// A warm pool: restored, paused VMs of one template, waiting to be claimed.
// A claim takes one (the caller runs it and gives it an identity) and the
// pool refills in the background. Idle pools drain to zero.

import type { Vm } from "./vm.js";

export interface PoolOptions {
  template: string;
  target: number;
  /** Restores one paused VM of the template. */
  restore: () => Promise<Vm>;
  /** Drain to zero after this long without a claim (ms). */
  idleMs: number;
  onError?: (err: Error) => void;
  /**
   * How long a claim waits before its refill starts (ms, default 100). Starting
   * a restore blocks the event loop for ~10–20 ms (QEMU's spawn forks this
   * process) and its boot takes a core: the claimed sandbox's activation and
   * its caller's first calls, which follow at once, go first.
   */
  refillDelayMs?: number;
}

export class WarmPool {
  private readonly warm: Vm[] = [];
  private filling = 0;
  private claimed = 0;
  private lastClaim = Date.now();
  private closed = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private readonly inflight = new Set<Promise<void>>();
  private keepWarm = false;
  private refillTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: PoolOptions) {}

  get status(): { template: string; warm: number; target: number; claimed: number } {
    return { template: this.opts.template, warm: this.warm.length, target: this.opts.target, claimed: this.claimed };
  }

  /**
   * A target set from outside (the API, a cluster's SandboxPool `min`): kept
   * warm even when idle, since someone asked for exactly this many.
   */
  setTarget(n: number, opts: { keepWarm?: boolean } = {}): void {
    this.opts.target = n;
    if (opts.keepWarm !== undefined) this.keepWarm = opts.keepWarm;
    // Fewer wanted: stop the surplus now rather than at the idle timeout.
    for (const vm of this.warm.splice(n)) void vm.destroy();
    this.fill();
  }

  /** A warm VM, or undefined when none is ready (the caller restores one itself). */
  take(): Vm | undefined {
    this.lastClaim = Date.now();
    let vm = this.warm.shift();
    while (vm && !vm.running) vm = this.warm.shift();
    if (!vm) {
      this.fill();
      return undefined;
    }
    this.claimed++;
    this.refillTimer ??= setTimeout(() => {
      this.refillTimer = undefined;
      this.fill();
    }, this.opts.refillDelayMs ?? 100);
    return vm;
  }

  /** Starts restores until warm + in flight reaches the target. */
  fill(): void {
    if (this.closed) return;
    this.armIdle();
    while (this.warm.length + this.filling < this.opts.target) {
      this.filling++;
      const p: Promise<void> = this.opts
        .restore()
        .then((vm) => {
          this.failures = 0;
          // Awaited: close() waits for in-flight restores, so this one is gone by then.
          if (this.closed) return vm.destroy();
          this.warm.push(vm);
          vm.exited.then(() => {
            const i = this.warm.indexOf(vm);
            if (i < 0) return; // claimed: its sandbox handles the exit
            // Died while warm: remove its runtime dir and replace it.
            this.warm.splice(i, 1);
            void vm.destroy().then(() => this.fill());
          });
        })
        .catch((err: Error) => {
          this.failures++;
          this.opts.onError?.(err);
        })
        .finally(() => {
          this.filling--;
          // Back off after repeated failures instead of spinning.
          if (this.failures > 0) setTimeout(() => this.fill(), Math.min(30_000, 500 * 2 ** this.failures)).unref();
          else this.fill();
          this.inflight.delete(p);
        });
      this.inflight.add(p);
      if (this.failures > 0) break;
    }
  }

  private armIdle(): void {
    if (this.idleTimer) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (!this.keepWarm && Date.now() - this.lastClaim >= this.opts.idleMs) {
        for (const vm of this.warm.splice(0)) void vm.destroy();
        return; // stays empty until the next claim
      }
      this.armIdle();
    }, this.opts.idleMs);
    this.idleTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.refillTimer) clearTimeout(this.refillTimer);
    await Promise.all([...this.inflight]);
    await Promise.all(this.warm.splice(0).map((vm) => vm.destroy()));
  }
}
