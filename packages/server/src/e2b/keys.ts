// E2B API keys: `e2b_<hex>` (the shape E2B's SDKs check), issued by mitosd
// (`mitos e2b key create`) and kept apart from the admin token: a key opens
// the E2B control plane only, never /v1. Only sha256 hashes are stored, in
// <data>/e2b/keys.json.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import path from "node:path";
import { MitosError } from "@mitos/engine";
import { readJson, writeJson } from "./registry.js";

export interface E2bKeyInfo {
  id: string;
  name: string;
  /** The first characters of the key, to tell keys apart in listings. */
  prefix: string;
  createdAt: string;
}

interface StoredKey extends E2bKeyInfo {
  sha256: string;
}

export class E2bKeys {
  private readonly file: string;
  private keys: StoredKey[];

  constructor(dataDir: string) {
    this.file = path.join(dataDir, "e2b", "keys.json");
    this.keys = readJson<StoredKey[]>(this.file) ?? [];
  }

  /** A new key; the only time its value is shown. */
  create(name = ""): E2bKeyInfo & { key: string } {
    if (name.length > 100) {
      throw new MitosError("invalid_input", "a key name is at most 100 characters", {
        remediation: "Use a shorter name.",
        context: { field: "name" },
      });
    }
    const key = `e2b_${randomBytes(20).toString("hex")}`;
    const info: E2bKeyInfo = {
      id: `key-${randomBytes(4).toString("hex")}`,
      name,
      prefix: key.slice(0, 10),
      createdAt: new Date().toISOString(),
    };
    this.keys.push({ ...info, sha256: hash(key) });
    writeJson(this.file, this.keys);
    return { ...info, key };
  }

  list(): E2bKeyInfo[] {
    return this.keys.map(({ sha256: _, ...info }) => info);
  }

  revoke(id: string): void {
    const before = this.keys.length;
    this.keys = this.keys.filter((k) => k.id !== id);
    if (this.keys.length === before) {
      throw new MitosError("not_found", `no E2B key ${id}`, { remediation: "List keys with `mitos e2b key ls`." });
    }
    writeJson(this.file, this.keys);
  }

  /** Whether `given` is a live key (constant time per key). */
  check(given: string | undefined): boolean {
    if (!given) return false;
    const h = Buffer.from(hash(given.trim()), "hex");
    let ok = false;
    for (const k of this.keys) ok = timingSafeEqual(h, Buffer.from(k.sha256, "hex")) || ok;
    return ok;
  }
}

function hash(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}
