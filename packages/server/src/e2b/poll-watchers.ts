// envd's polling watcher (CreateWatcher / GetWatcherEvents / RemoveWatcher),
// which the Python SDK's synchronous client uses: a DirWatch whose events
// wait in a bounded buffer until the client collects them. A watcher the
// client stops collecting from is dropped after a while, so a crashed client
// does not leave a poller behind (a poll keeps its sandbox awake).

import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { envdFilesystem as pb } from "@mitos/proto/envd";
import type { DirEvent, DirWatch } from "./dir-watch.js";
import { envdError } from "./envd-context.js";

export interface PollWatcherLimits {
  /** Watchers one sandbox may have at once. */
  perSandbox: number;
  /** Uncollected events a watcher holds; one more ends it with resource_exhausted. */
  events: number;
  /** A watcher nobody collected from for this long is removed. */
  idleMs: number;
}

const DEFAULTS: PollWatcherLimits = { perSandbox: 64, events: 10_000, idleMs: 10 * 60_000 };

interface Watcher {
  sandbox: string;
  watch: DirWatch;
  events: pb.FilesystemEvent[];
  error?: ConnectError;
  lastUsed: number;
}

export class PollWatchers {
  private readonly byId = new Map<string, Watcher>();
  private sweeper: NodeJS.Timeout | undefined;
  private readonly limits: PollWatcherLimits;

  constructor(limits: Partial<PollWatcherLimits> = {}) {
    this.limits = { ...DEFAULTS, ...limits };
  }

  /** Starts buffering `watch`'s events (converted by `toEvent`); returns the watcher id. */
  add(sandbox: string, watch: DirWatch, toEvent: (e: DirEvent) => Promise<pb.FilesystemEvent>): string {
    const mine = [...this.byId.values()].filter((w) => w.sandbox === sandbox).length;
    if (mine >= this.limits.perSandbox) {
      watch.stop();
      throw new ConnectError(
        `sandbox has ${mine} watchers; remove some (RemoveWatcher) before creating more`,
        Code.ResourceExhausted,
      );
    }
    const id = `w${randomBytes(12).toString("hex")}`;
    const w: Watcher = { sandbox, watch, events: [], lastUsed: Date.now() };
    watch.start(
      async (events) => {
        for (const e of events) {
          if (w.events.length >= this.limits.events) {
            throw new ConnectError(
              `watcher ${id} holds ${this.limits.events} uncollected events; collect them more often`,
              Code.ResourceExhausted,
            );
          }
          w.events.push(await toEvent(e));
        }
      },
      (err) => {
        w.error = envdError(err);
      },
    );
    this.byId.set(id, w);
    this.sweeper ??= setInterval(() => this.sweep(), Math.min(60_000, this.limits.idleMs)).unref();
    return id;
  }

  /** The events since the last call; the error that ended the watcher, if one did (as envd). */
  take(sandbox: string, id: string): pb.FilesystemEvent[] {
    const w = this.find(sandbox, id);
    w.lastUsed = Date.now();
    if (w.error) throw w.error;
    const events = w.events;
    w.events = [];
    return events;
  }

  remove(sandbox: string, id: string): void {
    this.find(sandbox, id).watch.stop();
    this.byId.delete(id);
  }

  private find(sandbox: string, id: string): Watcher {
    const w = this.byId.get(id);
    // Another sandbox's watcher is as unknown as a made-up id.
    if (!w || w.sandbox !== sandbox) throw new ConnectError(`watcher with id ${id} not found`, Code.NotFound);
    return w;
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, w] of this.byId) {
      if (now - w.lastUsed > this.limits.idleMs) {
        w.watch.stop();
        this.byId.delete(id);
      }
    }
    if (this.byId.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }
}
