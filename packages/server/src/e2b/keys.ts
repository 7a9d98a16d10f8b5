// E2B API keys: `e2b_<hex>` (the shape E2B's SDKs check), issued by mitosd
// (`mitos e2b key create`) and kept apart from the admin token: a key opens
// the E2B control plane only, never /v1. Only sha256 hashes are stored, in
// <data>/e2b/keys.json.

import { randomBytes } from "node:crypto";
import path from "node:path";
import { HashedKeys, type KeyInfo } from "../hashed-keys.js";

export type E2bKeyInfo = KeyInfo;

export class E2bKeys {
  private readonly keys: HashedKeys;

  constructor(dataDir: string) {
    this.keys = new HashedKeys(
      path.join(dataDir, "e2b", "keys.json"),
      () => `e2b_${randomBytes(20).toString("hex")}`,
      "E2B key",
    );
  }

  /** A new key; the only time its value is shown. */
  create(name = ""): E2bKeyInfo & { key: string } {
    return this.keys.create(name, {});
  }

  list(): E2bKeyInfo[] {
    return this.keys.list();
  }

  revoke(id: string): void {
    this.keys.revoke(id, "List keys with `mitos e2b key ls`.");
  }

  /** Whether `given` is a live key (constant time per key). */
  check(given: string | undefined): boolean {
    return this.keys.find(given) !== undefined;
  }
}
