// envd's directory watch without inotify: the agent has none, so mitosd
// polls. Each poll lists the directory (the tree, when recursive) through the
// agent and compares it with the last listing; the differences become envd's
// events. Changes that cancel out between two polls are not seen, and a file
// created and written between polls shows as CREATE then WRITE, as inotify
// would report it.

import { Code, ConnectError } from "@connectrpc/connect";
import { type FileInfo, GuestError, MitosError } from "@mitos/engine";
import { envdFilesystem as pb } from "@mitos/proto/envd";
import { type FsAgent, isMissing, statFollow, walk } from "./envd-entries.js";

/** The entries of a watched directory by path relative to it. */
export type Snapshot = Map<string, FileInfo>;

export interface DirEvent {
  /** Path relative to the watched directory. */
  name: string;
  type: pb.EventType;
  /** The entry after the change (not for REMOVE and RENAME). */
  info?: FileInfo;
}

export const WATCH_LIMIT = 10_000;
export const POLL_MS = 200;
/** Consecutive failed polls (the agent unreachable, e.g. across a fork) before the watch ends. */
const MAX_FAILURES = 5;

/**
 * What changed from `prev` to `next`. A removed entry whose exact twin
 * (type, size, mtime to the nanosecond, mode, owner) appears under one new
 * name counts as renamed: RENAME of the old name, CREATE of the new, as
 * inotify reports a move. Removals come first, children before parents;
 * then creations and changes, parents before children.
 */
export function diffSnapshots(prev: Snapshot, next: Snapshot): DirEvent[] {
  const removed: string[] = [];
  const created: string[] = [];
  for (const [name, old] of prev) {
    if (next.get(name)?.type !== old.type) removed.push(name);
  }
  const changes: DirEvent[] = [];
  for (const [name, cur] of next) {
    const old = prev.get(name);
    if (old?.type !== cur.type) {
      created.push(name);
      continue;
    }
    // A directory's mtime moves with its children, which have their own events.
    if (cur.type === "file" && (cur.size !== old.size || cur.mtime !== old.mtime || cur.mtimeNsec !== old.mtimeNsec)) {
      changes.push({ name, type: pb.EventType.WRITE, info: cur });
    }
    if (cur.mode !== old.mode || cur.uid !== old.uid || cur.gid !== old.gid) {
      changes.push({ name, type: pb.EventType.CHMOD, info: cur });
    }
  }
  const renamedTo = pairRenames(removed, created, prev, next);
  const gone: DirEvent[] = removed.map((name) => ({
    name,
    type: renamedTo.has(name) ? pb.EventType.RENAME : pb.EventType.REMOVE,
  }));
  const moved = new Set(renamedTo.values());
  const born: DirEvent[] = [];
  for (const name of created) {
    const info = next.get(name) as FileInfo;
    born.push({ name, type: pb.EventType.CREATE, info });
    if (info.type === "file" && info.size > 0 && !moved.has(name)) born.push({ name, type: pb.EventType.WRITE, info });
  }
  gone.sort((a, b) => compare(b.name, a.name));
  // Stable sort: per name, CREATE stays before WRITE before CHMOD.
  const rest = [...born, ...changes].sort((a, b) => compare(a.name, b.name));
  return [...gone, ...rest];
}

/** old name → new name for removed entries whose twin was created under exactly one name. */
function pairRenames(removed: string[], created: string[], prev: Snapshot, next: Snapshot): Map<string, string> {
  const byKey = (names: string[], snap: Snapshot) => {
    const m = new Map<string, string[]>();
    for (const n of names) {
      const k = identity(snap.get(n) as FileInfo);
      m.set(k, [...(m.get(k) ?? []), n]);
    }
    return m;
  };
  const olds = byKey(removed, prev);
  const news = byKey(created, next);
  const pairs = new Map<string, string>();
  for (const [k, o] of olds) {
    const n = news.get(k);
    if (o.length === 1 && n?.length === 1) pairs.set(o[0] as string, n[0] as string);
  }
  return pairs;
}

function identity(f: FileInfo): string {
  return [f.type, f.size, f.mtime, f.mtimeNsec, f.mode, f.uid, f.gid, f.target ?? ""].join("\0");
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The watched directory's entries (its whole tree when recursive), by relative path. */
export async function snapshot(
  agent: FsAgent,
  dir: string,
  recursive: boolean,
  limit = WATCH_LIMIT,
): Promise<Snapshot> {
  const entries = await walk(agent, dir, recursive ? Number.POSITIVE_INFINITY : 1, limit);
  return new Map(entries.map((e) => [e.rel, e.info]));
}

export interface WatchOptions {
  recursive: boolean;
  limit?: number;
  intervalMs?: number;
}

/**
 * A polling watch of one directory. `open` checks the path as envd does
 * (missing: not_found; not a directory: invalid_argument) and takes the
 * first listing, so changes made once it resolves are reported; `start`
 * begins polling.
 */
export class DirWatch {
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly agentOf: () => FsAgent,
    /** The watched directory, symlinks followed. */
    readonly dir: string,
    private readonly opts: Required<WatchOptions>,
    private prev: Snapshot,
  ) {}

  /** `agentOf` is asked on every poll: it throws once the sandbox is gone or stopped. */
  static async open(agentOf: () => FsAgent, dir: string, opts: WatchOptions): Promise<DirWatch> {
    const agent = agentOf();
    let root: FileInfo;
    try {
      root = await statFollow(agent, dir);
    } catch (err) {
      if (isMissing(err)) throw new ConnectError(`path ${dir} not found`, Code.NotFound);
      throw err;
    }
    if (root.type !== "dir") throw new ConnectError(`path ${dir} not a directory`, Code.InvalidArgument);
    const o = { limit: WATCH_LIMIT, intervalMs: POLL_MS, ...opts };
    return new DirWatch(agentOf, root.path, o, await snapshot(agent, root.path, o.recursive, o.limit));
  }

  /**
   * Polls until stopped. `onEvents` is awaited before the next poll (a slow
   * consumer slows the polling); `onError` gets the error that ended the
   * watch (sandbox gone, tree grown past the limit).
   */
  start(onEvents: (events: DirEvent[]) => Promise<void>, onError: (err: Error) => void): void {
    let failures = 0;
    let interval = this.opts.intervalMs;
    const tick = async () => {
      const began = Date.now();
      let next: Snapshot;
      try {
        next = await this.poll();
        failures = 0;
      } catch (err) {
        if (this.stopped) return;
        if (!transient(err) || ++failures >= MAX_FAILURES) return this.fail(err as Error, onError);
        return this.schedule(tick, interval);
      }
      if (this.stopped) return;
      const events = diffSnapshots(this.prev, next);
      this.prev = next;
      try {
        if (events.length > 0) await onEvents(events);
      } catch (err) {
        return this.fail(err as Error, onError);
      }
      // Big trees take long to list: keep polling from taking most of the agent's time.
      interval = Math.max(this.opts.intervalMs, 2 * (Date.now() - began));
      this.schedule(tick, interval);
    };
    this.schedule(tick, interval);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** The current listing; a watched directory that is gone (or no longer one) lists as empty. */
  private async poll(): Promise<Snapshot> {
    try {
      return await snapshot(this.agentOf(), this.dir, this.opts.recursive, this.opts.limit);
    } catch (err) {
      if (isMissing(err)) return new Map();
      throw err;
    }
  }

  private schedule(tick: () => Promise<void>, ms: number): void {
    // Unref'd: a watcher a client forgot must not keep mitosd from exiting.
    if (!this.stopped) this.timer = setTimeout(() => void tick(), ms).unref();
  }

  private fail(err: Error, onError: (err: Error) => void): void {
    this.stop();
    onError(err);
  }
}

/** Worth another poll: the agent connection dropped, not the sandbox gone or the tree too big. */
function transient(err: unknown): boolean {
  return err instanceof MitosError && !(err instanceof GuestError) && err.code === "unavailable";
}
