// Per-sandbox access tokens (docs/security.md "Per-sandbox tokens"): every
// create and fork answers with a token that reaches only that sandbox's
// runtime API, and a fork token that may only fork that sandbox. A token is
// `msb_<sandbox id>.<kind><mac>`: an HMAC of the kind, the id and the
// sandbox's creation time under a secret kept in the data dir, so tokens
// survive a restart (the sandboxes do), a child's token is its own, and a
// later sandbox that reuses an id never matches an earlier one's token.
// Nothing is stored per sandbox; the secret file rotates every token at once.

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { ID_RE } from "@mitos/engine";

/** runtime: exec, files, PTY, ports of the sandbox; fork: POST /v1/sandboxes/{id}/fork of it, nothing else. */
export type SandboxTokenKind = "runtime" | "fork";

const KIND_CHAR: Record<SandboxTokenKind, string> = { runtime: "r", fork: "f" };
const PREFIX = "msb_";

export interface SandboxTokenClaim {
  sandbox: string;
  kind: SandboxTokenKind;
}

export class SandboxTokens {
  private readonly secret: Buffer;

  constructor(
    dataDir: string,
    /** The creation time of a live sandbox, or undefined when there is none with that id. */
    private readonly createdAt: (sandbox: string) => string | undefined,
  ) {
    this.secret = loadSecret(path.join(dataDir, "sandbox-token.key"));
  }

  /** Whether a bearer value has the shape of a sandbox token (then it is checked here, not as an API key). */
  static looksLike(token: string): boolean {
    return token.startsWith(PREFIX);
  }

  issue(sandbox: string, createdAt: string, kind: SandboxTokenKind): string {
    return `${PREFIX}${sandbox}.${KIND_CHAR[kind]}${this.mac(sandbox, createdAt, kind)}`;
  }

  /** What a token grants, or undefined when it is malformed, forged or its sandbox is gone. */
  verify(token: string): SandboxTokenClaim | undefined {
    if (!token.startsWith(PREFIX) || token.length > 200) return undefined;
    const dot = token.lastIndexOf(".");
    const sandbox = token.slice(PREFIX.length, dot);
    if (dot < 0 || !ID_RE.test(sandbox)) return undefined;
    const kind = token[dot + 1] === "r" ? "runtime" : token[dot + 1] === "f" ? "fork" : undefined;
    const createdAt = this.createdAt(sandbox);
    if (!kind || createdAt === undefined) return undefined;
    const given = Buffer.from(token.slice(dot + 2));
    const want = Buffer.from(this.mac(sandbox, createdAt, kind));
    if (given.length !== want.length || !timingSafeEqual(given, want)) return undefined;
    return { sandbox, kind };
  }

  private mac(sandbox: string, createdAt: string, kind: SandboxTokenKind): string {
    return createHmac("sha256", this.secret).update(`${kind}\n${sandbox}\n${createdAt}`).digest("base64url");
  }
}

/** The HMAC secret, made (0600) on first use. */
function loadSecret(file: string): Buffer {
  try {
    const b = fs.readFileSync(file);
    if (b.length >= 32) return b;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const b = randomBytes(32);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, b, { mode: 0o600 });
  return b;
}
