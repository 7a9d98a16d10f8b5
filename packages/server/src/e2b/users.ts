// The guest user an envd call acts as: the Basic-auth username when the
// SDK names one (E2B-COMPAT.md §2), else the default user. Mitos sandboxes
// run as root with /workspace as the working directory, so the default user
// is root with /workspace as its home: relative paths and commands without
// a cwd land there, as they do through the Mitos API.

import path from "node:path";
import type { AgentClient } from "@mitos/engine";

export interface GuestUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

const MAX_PASSWD_BYTES = 1 << 20;

export const DEFAULT_USER: GuestUser = { name: "root", uid: 0, gid: 0, home: "/workspace" };

/** The username from `Authorization: Basic base64(user:)`, or undefined for the default user. */
export function basicUser(header: string | undefined | null): string | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/.exec(header?.trim() ?? "");
  if (!m) return undefined;
  const decoded = Buffer.from(m[1] as string, "base64").toString("utf8");
  const name = decoded.split(":")[0] ?? "";
  return name === "" ? undefined : name;
}

/** A passwd line's fields, for `name`; undefined when the guest has no such user. */
export function parsePasswd(text: string, name: string): GuestUser | undefined {
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 7 || f[0] !== name) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) return undefined;
    return { name, uid, gid, home: uid === 0 ? DEFAULT_USER.home : f[5] || "/" };
  }
  return undefined;
}

/** Names of uids or gids from /etc/passwd or /etc/group text. */
export function idNames(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length >= 3 && f[0] && Number.isInteger(Number(f[2]))) names.set(Number(f[2]), f[0]);
  }
  return names;
}

/** Resolves the calling user in the guest; undefined when the name is unknown there. */
export async function guestUser(agent: AgentClient, header: string | undefined | null): Promise<GuestUser | undefined> {
  const name = basicUser(header);
  if (name === undefined || name === "root") return DEFAULT_USER;
  // Bounded: the guest's /etc/passwd is the guest's to make huge.
  const passwd = (await agent.readFile("/etc/passwd", { length: MAX_PASSWD_BYTES })).toString("utf8");
  return parsePasswd(passwd, name);
}

/** envd's path rule: `~` is the home, relative paths resolve against it. */
export function resolvePath(p: string, user: GuestUser): string {
  let q = p;
  if (q === "~") q = user.home;
  else if (q.startsWith("~/")) q = path.posix.join(user.home, q.slice(2));
  return path.posix.resolve(user.home, q);
}
