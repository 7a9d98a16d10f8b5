// Host-side flow-control windows shared by exec, file and port streams
// (docs/agent-protocol.md, "Flow control").

import { DEFAULT_WINDOW, STDIN_WINDOW } from "./protocol.js";

/**
 * Host-side output window of one stream: the agent holds `left` bytes of
 * credit and may never exceed it, so a stream buffers at most DEFAULT_WINDOW.
 */
export class OutputWindow {
  private left = DEFAULT_WINDOW;
  private unacked = 0;

  /** Counts bytes received; false when they overran the credit. */
  take(n: number): boolean {
    this.left -= n;
    return this.left >= 0;
  }

  /** Counts bytes consumed; returns the credit to grant now (0: not yet). */
  consumed(n: number): number {
    this.unacked += n;
    if (this.unacked < DEFAULT_WINDOW / 4) return 0;
    const grant = this.unacked;
    this.unacked = 0;
    this.left += grant;
    return grant;
  }
}

/** Host-side input window (exec stdin, port data): at most `size` bytes unacknowledged. */
export class InputWindow {
  private available: number;
  private waiters: Array<() => void> = [];
  private error: Error | undefined;

  constructor(readonly size = STDIN_WINDOW) {
    this.available = size;
  }

  /** Bytes sent and not yet acknowledged. */
  get unacked(): number {
    return this.size - this.available;
  }

  async reserve(want: number): Promise<number> {
    for (;;) {
      if (this.error) throw this.error;
      if (this.available > 0) {
        const n = Math.min(want, this.available);
        this.available -= n;
        return n;
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  ack(n: number): void {
    this.available += n;
    this.wake();
  }

  fail(e: Error): void {
    this.error ??= e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/**
 * How fast a sandbox's commands may hand the host output (docs/security.md
 * "Hostile guests"): a token bucket of `bytesPerSecond` with a second's burst.
 * Each output frame costs its bytes plus FRAME_COST (a flood of tiny frames is
 * host work too). The host holds back the credit it would grant until the
 * bucket has room again, so a flood waits in the guest, not in mitosd.
 */
export class OutputRate {
  static readonly FRAME_COST = 256;
  private level = 0;

  constructor(
    readonly bytesPerSecond: number,
    private at = Date.now(),
  ) {}

  /** Counts a frame of `n` bytes. */
  add(n: number, now = Date.now()): void {
    this.drain(now);
    this.level += n + OutputRate.FRAME_COST;
  }

  /** How long credit must wait (ms) for the bucket to be back within its burst. */
  delay(now = Date.now()): number {
    this.drain(now);
    const over = this.level - this.bytesPerSecond;
    return over > 0 ? Math.ceil((over / this.bytesPerSecond) * 1000) : 0;
  }

  private drain(now: number): void {
    this.level = Math.max(0, this.level - (Math.max(0, now - this.at) / 1000) * this.bytesPerSecond);
    this.at = Math.max(this.at, now);
  }
}
