// Bearer-token auth: a random token created on first start in the data dir
// (mode 0600), compared in constant time.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export function tokenPath(dataDir: string): string {
  return path.join(dataDir, "token");
}

/** Reads the token, creating it (0600) when absent. */
export function ensureToken(dataDir: string): { token: string; path: string; created: boolean } {
  const file = tokenPath(dataDir);
  try {
    const token = fs.readFileSync(file, "utf8").trim();
    if (token.length >= 32) return { token, path: file, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const token = `mitos_${randomBytes(24).toString("base64url")}`;
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  return { token, path: file, created: true };
}

/** Compares `Authorization: Bearer <t>` against the token in constant time. */
export function authorized(header: string | undefined | null, token: string): boolean {
  if (!header?.startsWith("Bearer ")) return false;
  // Hash both sides so the comparison takes the same time whatever the lengths.
  const a = createHash("sha256").update(header.slice(7).trim()).digest();
  const b = createHash("sha256").update(token).digest();
  return timingSafeEqual(a, b);
}

/** The WebSocket subprotocol prefix that carries a bearer token (base64url) for browsers, which cannot set headers. */
export const BEARER_SUBPROTOCOL = "base64url.bearer.mitos.";

/**
 * `Authorization` as the request gave it, or built from a `base64url.bearer.mitos.<token>`
 * subprotocol on a WebSocket upgrade (a browser's only way; a URL would be logged).
 */
export function authorizationOf(headers: { authorization?: string; upgrade?: string; [k: string]: unknown }) {
  if (headers.authorization !== undefined || !headers.upgrade) return headers.authorization;
  const offered = headers["sec-websocket-protocol"];
  if (typeof offered !== "string") return undefined;
  for (const p of offered.split(",")) {
    const t = p.trim();
    if (t.startsWith(BEARER_SUBPROTOCOL)) {
      return `Bearer ${Buffer.from(t.slice(BEARER_SUBPROTOCOL.length), "base64url").toString("utf8")}`;
    }
  }
  return undefined;
}
