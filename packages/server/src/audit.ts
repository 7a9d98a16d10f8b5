// The audit log (docs/security.md "Audit log"): one JSON line per call that
// acts on sandboxes, templates, checkpoints or keys — who (the key id, never
// the key), what (the route or runtime method), which sandbox, the outcome
// (HTTP status and error code) and how long it took. Never bodies, commands,
// paths, file contents or tokens. <data>/audit.log, 0600, rotated to
// audit.log.1 past a size cap.

import fs from "node:fs";
import path from "node:path";
import type { Principal } from "./access.js";

export interface AuditEntry {
  /** The key id (`admin-token`, `key-…`, `sandbox:<id>`), or `-` for a call with no valid credential. */
  key: string;
  tenant?: string;
  /** `POST /v1/sandboxes/:id/fork` or `sandbox.v1.Sandbox/ExecStream`. */
  action: string;
  sandbox?: string;
  /** Sandboxes the call made (create, fork). */
  created?: string[];
  status: number;
  /** The API error code when the call failed. */
  error?: string;
  ms: number;
}

const MAX_BYTES = 64 << 20;

export class AuditLog {
  readonly file: string;
  private size: number;

  constructor(
    dataDir: string,
    private readonly maxBytes = MAX_BYTES,
  ) {
    this.file = path.join(dataDir, "audit.log");
    try {
      this.size = fs.statSync(this.file).size;
    } catch {
      this.size = 0;
    }
  }

  write(e: AuditEntry): void {
    const line = `${JSON.stringify({ ts: new Date().toISOString(), ...e })}\n`;
    try {
      if (this.size + line.length > this.maxBytes) {
        // Counted afresh even when the rename fails (the file was removed): lines must not stop.
        this.size = 0;
        fs.renameSync(this.file, `${this.file}.1`);
      }
      // Appended synchronously: a line written is on its way to disk before the answer is.
      fs.appendFileSync(this.file, line, { mode: 0o600 });
      this.size += line.length;
    } catch {
      // A full disk must not fail the call it records; the daemon's log says what could not be written.
    }
  }
}

/** The who of an audit entry. */
export function auditWho(p: Principal | undefined): Pick<AuditEntry, "key" | "tenant"> {
  if (!p) return { key: "-" };
  return p.kind === "tenant" ? { key: p.keyId, tenant: p.tenant } : { key: p.keyId };
}

const notes = new WeakMap<object, { error?: string; created?: string[] }>();

/** What a handler adds to its request's audit entry (the error code, the sandboxes it made); returns the notes so far. */
export function auditNote(
  req: object,
  add: { error?: string; created?: string[] } = {},
): {
  error?: string;
  created?: string[];
} {
  const n = { ...(notes.get(req) ?? {}), ...add };
  notes.set(req, n);
  return n;
}

/** A stream's messages, with `done` called once when it ends (with its error, if it failed). */
export async function* audited<T>(messages: AsyncIterable<T>, done: (err?: unknown) => void): AsyncIterable<T> {
  let failed = false;
  try {
    yield* messages;
  } catch (err) {
    failed = true;
    done(err);
    throw err;
  } finally {
    // Also when the client stops reading early.
    if (!failed) done();
  }
}

/** The sandbox a lifecycle body names (set_timeout, pause, resume). */
export function bodySandbox(body: unknown): string | undefined {
  const s = (body as { sandbox?: unknown } | undefined)?.sandbox;
  return typeof s === "string" ? s : undefined;
}
