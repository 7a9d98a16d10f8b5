// A file of API keys kept as sha256 hashes: a key's value is shown once, at
// creation, and only its hash and first characters are stored. Random keys of
// 160+ bits need no slow hash; every lookup compares against every stored
// hash in constant time, so timing says nothing about which key came close.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { MitosError } from "@mitos/engine";
import { readJson, writeJson } from "./json-file.js";

export interface KeyInfo {
  id: string;
  name: string;
  /** The first characters of the key, to tell keys apart in listings. */
  prefix: string;
  createdAt: string;
}

type Stored<E> = KeyInfo & E & { sha256: string };

export class HashedKeys<E extends object = object> {
  private keys: Array<Stored<E>>;

  constructor(
    private readonly file: string,
    /** Makes a new key's value (e.g. `e2b_<hex>`). */
    private readonly mint: () => string,
    /** What a listing and a not_found error call the keys. */
    private readonly what: string,
  ) {
    this.keys = readJson<Array<Stored<E>>>(file) ?? [];
  }

  /** A new key; the only time its value is shown. */
  create(name: string, extra: E): KeyInfo & E & { key: string } {
    if (name.length > 100) {
      throw new MitosError("invalid_input", "a key name is at most 100 characters", {
        remediation: "Use a shorter name.",
        context: { field: "name" },
      });
    }
    const key = this.mint();
    const info = {
      id: `key-${randomBytes(4).toString("hex")}`,
      name,
      prefix: key.slice(0, 10),
      createdAt: new Date().toISOString(),
      ...extra,
    };
    this.keys.push({ ...info, sha256: hash(key) });
    writeJson(this.file, this.keys);
    return { ...info, key };
  }

  list(): Array<KeyInfo & E> {
    return this.keys.map(({ sha256: _, ...info }) => info as KeyInfo & E);
  }

  revoke(id: string, remediation: string): KeyInfo & E {
    const gone = this.keys.find((k) => k.id === id);
    if (!gone) throw new MitosError("not_found", `no ${this.what} ${id}`, { remediation, context: { key: id } });
    this.keys = this.keys.filter((k) => k !== gone);
    writeJson(this.file, this.keys);
    const { sha256: _, ...info } = gone;
    return info as KeyInfo & E;
  }

  /** The live key `given` is, if any. */
  find(given: string | undefined): (KeyInfo & E) | undefined {
    if (!given) return undefined;
    const h = Buffer.from(hash(given.trim()), "hex");
    let found: Stored<E> | undefined;
    for (const k of this.keys) if (timingSafeEqual(h, Buffer.from(k.sha256, "hex"))) found = k;
    if (!found) return undefined;
    const { sha256: _, ...info } = found;
    return info as KeyInfo & E;
  }
}

function hash(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}
