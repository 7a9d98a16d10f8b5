// What the E2B front door keeps per sandbox besides the engine's state: the
// envd access token (X-Access-Token, signed file URLs), the traffic token
// (guest ports), metadata and the client id. Kept in <data>/e2b/sandboxes.json
// so tokens survive a restart of mitosd (its sandboxes do). Entries are
// keyed by id and creation time: a later sandbox reusing an id never
// inherits another's token.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import path from "node:path";
import type { Engine, SandboxInfo } from "@mitos/engine";
import { readJson, writeJson } from "../json-file.js";

export interface E2bSandboxRecord {
  /** The sandbox's createdAt, to tell a reused id from the original. */
  createdAt: string;
  envdAccessToken: string;
  trafficAccessToken: string;
  metadata: Record<string, string>;
  /** The template id the client asked for (an alias such as code-interpreter-v1 included). */
  templateId: string;
}

export class E2bRegistry {
  private readonly file: string;
  private records: Record<string, E2bSandboxRecord>;

  constructor(
    dataDir: string,
    private readonly engine: Engine,
  ) {
    this.file = path.join(dataDir, "e2b", "sandboxes.json");
    this.records = readJson(this.file) ?? {};
  }

  /**
   * The record of a live sandbox, made on first use: sandboxes created
   * through the Mitos API get tokens when E2B clients first reach them.
   */
  record(s: SandboxInfo, init: Partial<Pick<E2bSandboxRecord, "metadata" | "templateId">> = {}): E2bSandboxRecord {
    const r = this.records[s.id];
    if (r && r.createdAt === s.createdAt) return r;
    this.prune();
    const fresh: E2bSandboxRecord = {
      createdAt: s.createdAt,
      envdAccessToken: `ea_${randomBytes(20).toString("hex")}`,
      trafficAccessToken: `ta_${randomBytes(20).toString("hex")}`,
      metadata: init.metadata ?? {},
      templateId: init.templateId ?? s.templateId,
    };
    this.records[s.id] = fresh;
    this.save();
    return fresh;
  }

  /** The record of a sandbox E2B clients have reached, without making one. */
  existing(s: SandboxInfo): E2bSandboxRecord | undefined {
    const r = this.records[s.id];
    return r && r.createdAt === s.createdAt ? r : undefined;
  }

  /** Whether `given` is the sandbox's envd access token (constant time). */
  checkEnvdToken(s: SandboxInfo, given: string | undefined): boolean {
    return given !== undefined && same(this.record(s).envdAccessToken, given);
  }

  /** Whether `given` is the sandbox's traffic token or its envd token. */
  checkTrafficToken(s: SandboxInfo, given: string | undefined): boolean {
    const r = this.record(s);
    return given !== undefined && (same(r.trafficAccessToken, given) || same(r.envdAccessToken, given));
  }

  /** Drops records of sandboxes that no longer exist (called as records are made). */
  private prune(): void {
    const live = new Map(this.engine.list().map((s) => [s.id, s.createdAt]));
    let changed = false;
    for (const [id, r] of Object.entries(this.records)) {
      if (live.get(id) !== r.createdAt) {
        delete this.records[id];
        changed = true;
      }
    }
    if (changed) this.save();
  }

  private save(): void {
    writeJson(this.file, this.records);
  }
}

function same(a: string, b: string): boolean {
  const x = createHash("sha256").update(a).digest();
  const y = createHash("sha256").update(b).digest();
  return timingSafeEqual(x, y);
}
