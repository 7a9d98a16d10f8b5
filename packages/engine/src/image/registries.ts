// How OCI images are pulled from registries (docs/templates.md "Private and
// insecure registries"): credentials from a Docker-style auth file and/or
// from mitosd's config, and the registries reached over plain HTTP besides
// loopback ones. Credentials given in the config are written to a 0600 auth
// file in the data dir (merged over the given file's entries) because that
// is how skopeo takes them: never on a command line, where `ps` shows them.

import fs from "node:fs";
import path from "node:path";
import { MitosError } from "../errors.js";

export interface RegistryOptions {
  /** A Docker-style auth file (`{"auths": {"host[:port]": {"auth": base64(user:pass)}}}`). */
  authFile?: string;
  /** Registry host[:port] → credentials. */
  credentials?: Record<string, { username: string; password: string }>;
  /** Registries (host[:port]) reached over plain HTTP (loopback ones always are, as Docker does). */
  insecure?: string[];
}

/** What a pull needs: the auth file to pass skopeo (if any) and the insecure list. */
export interface PullAuth {
  authFile?: string;
  insecureRegistries: string[];
}

const REGISTRY_RE = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$|^\[[0-9a-f:]+\](:\d{1,5})?$/i;

/** Checks the options and writes the merged auth file when credentials are configured. */
export function pullAuth(opts: RegistryOptions | undefined, dataDir: string): PullAuth {
  const insecure = opts?.insecure ?? [];
  for (const r of [...insecure, ...Object.keys(opts?.credentials ?? {})]) {
    if (!REGISTRY_RE.test(r)) {
      throw new MitosError("invalid_input", `${JSON.stringify(r)} is not a registry host[:port]`, {
        remediation:
          "Name registries as in image references: registry.example.com or 10.0.0.5:5000 (no scheme, no path).",
      });
    }
  }
  const given = opts?.authFile;
  if (given && !fs.existsSync(given)) {
    throw new MitosError("invalid_input", `registry auth file ${given} does not exist`, {
      remediation: "Point registry_auth_file at a Docker-style auth file (e.g. ~/.docker/config.json), or remove it.",
    });
  }
  const creds = Object.entries(opts?.credentials ?? {});
  if (creds.length === 0) return { ...(given ? { authFile: given } : {}), insecureRegistries: insecure };
  let auths: Record<string, unknown> = {};
  if (given) {
    try {
      const parsed = JSON.parse(fs.readFileSync(given, "utf8")) as { auths?: Record<string, unknown> };
      auths = { ...(parsed.auths ?? {}) };
    } catch (err) {
      throw new MitosError("invalid_input", `registry auth file ${given} is not JSON`, {
        remediation: 'A Docker-style auth file is {"auths": {"host": {"auth": "<base64 user:password>"}}}.',
        cause: (err as Error).message,
      });
    }
  }
  for (const [registry, { username, password }] of creds) {
    auths[registry] = { auth: Buffer.from(`${username}:${password}`).toString("base64") };
  }
  const file = path.join(dataDir, "registry-auth.json");
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ auths }), { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, file);
  return { authFile: file, insecureRegistries: insecure };
}
