// Idempotency-Key on creating calls: the same key within 24 h returns the
// same answer (no second resource); the same key still in flight is a 409.

import { createHash } from "node:crypto";
import { MitosError } from "@mitos/engine";
import type { FastifyReply, FastifyRequest } from "fastify";

interface Entry {
  expires: number;
  status: number | undefined;
  body: unknown;
}

const TTL_MS = 24 * 60 * 60 * 1000;
const MAX_ENTRIES = 100_000;

export class IdempotencyCache {
  private readonly entries = new Map<string, Entry>();

  async run(req: FastifyRequest, reply: FastifyReply, handler: () => Promise<unknown>): Promise<unknown> {
    const key = req.headers["idempotency-key"];
    if (typeof key !== "string" || key === "") return handler();
    if (key.length > 256) {
      throw new MitosError("invalid_input", "Idempotency-Key is longer than 256 characters", {
        remediation: "Use a UUID as the key.",
      });
    }
    this.sweep();
    // Per credential: another key (or a later sandbox's token under a reused id) sending the same
    // Idempotency-Key gets its own answer, never this one.
    const who = createHash("sha256")
      .update(req.headers.authorization ?? "")
      .digest("base64url");
    const k = `${who} ${req.method} ${req.url} ${key}`;
    const hit = this.entries.get(k);
    if (hit) {
      if (hit.status === undefined) {
        throw new MitosError("conflict", "a request with this Idempotency-Key is still in flight", {
          remediation: "Wait for the first request to finish, then retry with the same key to get its answer.",
        });
      }
      reply.code(hit.status).header("idempotent-replayed", "true");
      return hit.body;
    }
    const entry: Entry = { expires: Date.now() + TTL_MS, status: undefined, body: undefined };
    this.entries.set(k, entry);
    try {
      const body = await handler();
      entry.status = 200;
      entry.body = body;
      return body;
    } catch (err) {
      // A failed attempt creates nothing, so a retry may run again.
      this.entries.delete(k);
      throw err;
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [k, e] of this.entries) {
      if (e.expires < now || this.entries.size > MAX_ENTRIES) this.entries.delete(k);
      else break; // insertion order = expiry order
    }
  }
}
