// Guest file entries as envd reports them (EntryInfo), and the agent calls
// the filesystem RPCs, /files and the directory watcher share: following
// symlinks, walking a tree, owner names.

import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type AgentClient, type FileInfo, type FileOwner, type FileType, GuestError } from "@mitos/engine";
import { envdFilesystem as pb } from "@mitos/proto/envd";
import type { GuestUser } from "./users.js";
import { idNames } from "./users.js";

/** The agent calls these modules make (a narrow type, so tests can fake it). */
export type FsAgent = Pick<AgentClient, "stat" | "list" | "mkdir" | "rename" | "remove" | "readFile" | "writeFile">;

export interface IdNames {
  users: Map<number, string>;
  groups: Map<number, string>;
}

const ENOENT = 2;
const ENOTDIR = 20;
const MAX_SYMLINK_HOPS = 40; // Linux's own limit
/** /etc/passwd and /etc/group are read at most this far: the guest is not trusted. */
const MAX_ID_FILE = 1 << 20;

const FILE_TYPES: Record<FileType, pb.FileType> = {
  file: pb.FileType.FILE,
  dir: pb.FileType.DIRECTORY,
  symlink: pb.FileType.SYMLINK,
  other: pb.FileType.UNSPECIFIED,
};

/** What files a user's request creates belong to (envd chowns them to the user). */
export function ownerOf(user: GuestUser): FileOwner {
  return { uid: user.uid, gid: user.gid };
}

/** Whether an agent error says the path (or a directory on it) is not there. */
export function isMissing(err: unknown): boolean {
  return err instanceof GuestError && (err.errno === ENOENT || err.errno === ENOTDIR);
}

/**
 * The permission string envd sends: Go's os.FileMode.String(), so type and
 * special-bit letters in Go's order (d, L, u, g, t, ?) then rwx triplets:
 * "-rw-r--r--", "drwxr-xr-x", "Lrwxrwxrwx", "dtrwxrwxrwx" for /tmp.
 */
export function permissions(type: FileType, mode: number): string {
  let s = "";
  if (type === "dir") s += "d";
  if (type === "symlink") s += "L";
  if (mode & 0o4000) s += "u";
  if (mode & 0o2000) s += "g";
  if (mode & 0o1000) s += "t";
  if (type === "other") s += "?"; // the agent does not tell devices, pipes and sockets apart
  if (s === "") s = "-";
  const rwx = "rwxrwxrwx";
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : "-";
  return s;
}

/** A symlink's target as an absolute path (a relative target is relative to the link's directory). */
export function linkTarget(f: FileInfo): string | undefined {
  if (f.type !== "symlink" || f.target === undefined) return undefined;
  return path.posix.resolve(path.posix.dirname(f.path), f.target);
}

/** envd's EntryInfo of an agent entry; `mode` is the permission bits, as envd's `FileMode.Perm()`. */
export function entryInfo(f: FileInfo, names: IdNames): pb.EntryInfo {
  const target = linkTarget(f);
  return create(pb.EntryInfoSchema, {
    name: f.name,
    type: FILE_TYPES[f.type],
    path: f.path,
    size: BigInt(f.size),
    mode: f.mode & 0o777,
    permissions: permissions(f.type, f.mode),
    owner: names.users.get(f.uid) ?? String(f.uid),
    group: names.groups.get(f.gid) ?? String(f.gid),
    modifiedTime: create(TimestampSchema, { seconds: BigInt(f.mtime), nanos: f.mtimeNsec }),
    ...(target !== undefined ? { symlinkTarget: target } : {}),
  });
}

/**
 * stat that follows symlinks (the agent's stat is lstat). The result's
 * `path` is where the chain ends. Targets are resolved lexically, so a
 * target with `..` after a symlinked directory may land elsewhere than the
 * kernel would; envd's own resolution has the same shape.
 */
export async function statFollow(agent: FsAgent, p: string): Promise<FileInfo> {
  let cur = p;
  for (let hops = 0; hops <= MAX_SYMLINK_HOPS; hops++) {
    const f = await agent.stat(cur);
    const next = linkTarget(f);
    if (f.type !== "symlink") return f;
    if (next === undefined) throw new ConnectError(`cannot read the symlink ${cur}`, Code.Internal);
    cur = next;
  }
  throw new ConnectError(
    `cyclic symlink or a chain of more than ${MAX_SYMLINK_HOPS} links at ${p}`,
    Code.FailedPrecondition,
  );
}

export interface WalkedEntry {
  /** The path below the walked directory, `/`-separated. */
  rel: string;
  info: FileInfo;
}

/**
 * The entries under `dir` down to `depth` levels (1 = its own entries), in
 * the order Go's filepath.WalkDir gives (names sorted, a directory's
 * contents right after it); symlinked directories are not entered.
 * Directories that vanish meanwhile are skipped. More than `limit` entries
 * is a resource_exhausted error, so a huge tree cannot exhaust mitosd.
 */
export async function walk(agent: FsAgent, dir: string, depth: number, limit: number): Promise<WalkedEntry[]> {
  const out: WalkedEntry[] = [];
  const visit = async (d: string, rel: string, level: number): Promise<void> => {
    let entries: FileInfo[];
    try {
      entries = await agent.list(d);
    } catch (err) {
      if (level > 1 && isMissing(err)) return;
      throw err;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const info of entries) {
      const r = rel === "" ? info.name : `${rel}/${info.name}`;
      out.push({ rel: r, info });
      if (out.length > limit) {
        throw new ConnectError(
          `${dir} holds more than ${limit} entries${depth > 1 ? ` within depth ${depth}` : ""}; use a smaller directory or depth`,
          Code.ResourceExhausted,
        );
      }
      if (info.type === "dir" && level < depth) await visit(info.path, r, level + 1);
    }
  };
  await visit(dir, "", 1);
  return out;
}

/**
 * uid and gid names from each sandbox's /etc/passwd and /etc/group, kept for
 * a few seconds: listings name the owner of every entry, and a user added in
 * the guest shows up soon after.
 */
export class GuestNames {
  private readonly cache = new Map<string, { at: number; names: Promise<IdNames> }>();

  constructor(
    private readonly ttlMs = 5_000,
    private readonly now: () => number = Date.now,
  ) {}

  get(sandbox: string, agent: FsAgent): Promise<IdNames> {
    const t = this.now();
    for (const [id, e] of this.cache) if (t - e.at > this.ttlMs) this.cache.delete(id);
    let e = this.cache.get(sandbox);
    if (!e) {
      e = { at: t, names: load(agent) };
      this.cache.set(sandbox, e);
    }
    return e.names;
  }
}

async function load(agent: FsAgent): Promise<IdNames> {
  // A guest without these files still lists: owners fall back to numbers.
  const read = (file: string) =>
    agent.readFile(file, { length: MAX_ID_FILE }).then(
      (b) => idNames(b.toString("utf8")),
      () => new Map<number, string>(),
    );
  const [users, groups] = await Promise.all([read("/etc/passwd"), read("/etc/group")]);
  return { users, groups };
}
