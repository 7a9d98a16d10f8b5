// mitosd's configuration: a JSON file (--config, or <data-dir>/mitosd.json
// when it exists), environment variables and flags; flags override the
// environment, which overrides the file. Unknown keys and bad values are
// refused with a message naming them, never ignored.

import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { defaultDataDir, LIMIT_NAMES, type Limits, resolveLimits } from "@mitos/engine";
import type { ServerOptions } from "./app.js";

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** File key → how to read it. Limit keys are the API's names (GET /v1/limits). */
const LIMIT_KEYS = Object.fromEntries(Object.entries(LIMIT_NAMES).map(([k, name]) => [name, k])) as Record<
  string,
  keyof Limits
>;
/** The limits given as whole numbers (admission and memory_overcommit are read on their own). */
type NumericLimit = Exclude<keyof Limits, "admission" | "memoryOvercommit">;
const OTHER_KEYS = [
  "host",
  "port",
  "data_dir",
  "auth",
  "body_limit_bytes",
  "max_message_bytes",
  "max_checkpoint_bytes",
  "checkpoint_retention",
  "hibernate_idle_seconds",
  "shutdown",
  "node",
  "kubeconfig",
  "namespace",
  "advertise_url",
  "gateway_token_file",
  "lease_seconds",
  "net_range",
  "dns_upstream",
  "domain",
  "registry_auth_file",
  "insecure_registries",
  "registry_credentials",
] as const;
/** Keys that only mean something with `node` (a Kubernetes node agent). */
const CLUSTER_KEYS = ["kubeconfig", "namespace", "advertise_url", "gateway_token_file", "lease_seconds"];
const ALL_KEYS = [...OTHER_KEYS, ...Object.keys(LIMIT_KEYS)];

const flagOf = (key: string) => `--${key.replaceAll("_", "-")}`;

export const HELP = `mitosd: the Mitos daemon (HTTP lifecycle API + Connect runtime)

  --config F       JSON config file (default <data-dir>/mitosd.json when it exists);
                   keys: ${ALL_KEYS.join(", ")}
  --host H         address to bind (default 127.0.0.1; env MITOS_HOST)
  --port P         port (default 8080; env MITOS_PORT)
  --data-dir D     data dir: images, templates, journal, token (default /var/lib/mitos; env MITOS_DATA_DIR)
  --auth MODE      token (default): every call needs the bearer token; none: no token, for local
                   development only, refused unless the listen address is loopback (env MITOS_AUTH)
  --body-limit-bytes N     largest JSON request body (default 1 MiB)
  --max-message-bytes N    largest single Connect message (default 4 MiB; streams may send many)
  --max-checkpoint-bytes N disk cap of the checkpoint store (default: a quarter of the data dir's filesystem)
  --checkpoint-retention N keep the N newest checkpoints of each sandbox, delete older ones (default: keep all)
  --hibernate-idle-seconds N  hibernate a sandbox no API call has touched for N seconds; the next
                           runtime call wakes it (default: never; docs/checkpoints.md)
  --domain D       guest port N of sandbox ID is served at http://N-ID.D:<port>/ (default localhost,
                   which resolves to this host; use a wildcard DNS name for remote clients; docs/ports.md)
  --net-range CIDR addresses of networked sandboxes' host links, a /31 each (default 10.201.0.0/16;
                   must not overlap a network the host uses; docs/network.md)
  --dns-upstream S DNS servers the sandboxes' resolver asks, comma separated ip[:port]
                   (default: the nameservers of /etc/resolv.conf)
  --registry-auth-file F  Docker-style auth file for pulling OCI images from private registries
                   (docs/templates.md); the config file's registry_credentials
                   ({"host": {"username", "password"}}, config file only) are merged over it
  --insecure-registries L  registries (host[:port], comma separated) reached over plain HTTP;
                   loopback registries always are, as Docker does
  --shutdown MODE  keep (default): on SIGTERM/SIGINT sandboxes keep running and the next mitosd
                   re-adopts them (docs/restarts.md); terminate: they are terminated (env MITOS_SHUTDOWN)

Kubernetes node agent (docs/kubernetes.md):
  --node NAME      run as the node agent of Kubernetes node NAME: renew a Lease with this host's
                   capacity and reconcile the SandboxPools and Sandboxes placed here (env NODE_NAME
                   is not read implicitly; pass --node "$NODE_NAME")
  --kubeconfig F   kubeconfig to use (default: the in-cluster service account)
  --namespace NS   namespace of the Mitos objects (default mitos-system)
  --advertise-url U  URL the gateway reaches this mitosd at (default: the listen URL)
  --gateway-token-file F  also accept the bearer token in F (the gateway's credential)
  --lease-seconds N  lease duration; renewed every third of it (default 15)

Spend caps (on by default; GET /v1/limits shows them; exceeding one is quota_exceeded):
  --admission cow|strict       cow (default): admit by what sandboxes really use (private pages,
                               shared bases once) plus each template's learnt cost, keeping
                               --memory-floor-mib free; strict: count nominal guest RAM only
  --memory-floor-mib N         host memory kept available (cow; default 5 % of host RAM, ≥ 512)
  --memory-overcommit X        cow: nominal guest RAM may add up to X × host RAM (default 12)
  --max-sandboxes N            live sandboxes (default cow: host RAM / 32 MiB; strict: 20 % / 64 MiB)
  --max-guest-memory-mib N     sum of live sandboxes' nominal guest RAM (default cow: overcommit ×
                               host RAM; strict: 75 % of host RAM)
  --max-fork-count N           children per fork request (default 64)
  --max-lifetime-seconds N     a sandbox's whole life incl. set_timeout (default 3600)
  --default-timeout-seconds N  deadline when none is asked for (default 300)
  --max-streams-per-sandbox N  concurrent exec/file streams per sandbox (default 64; else too_many_streams)

Flags override environment variables, which override the config file.
The API token is created on first start in <data-dir>/token (mode 0600).`;

export interface ClusterConfig {
  node: string;
  kubeconfig: string | undefined;
  namespace: string;
  advertiseUrl: string | undefined;
  gatewayTokenFile: string | undefined;
  leaseSeconds: number;
}

export interface DaemonConfig {
  options: ServerOptions;
  /** Set with --node: run the Kubernetes node agent too. */
  cluster: ClusterConfig | undefined;
  /** What a signalled shutdown does with running sandboxes. */
  shutdown: "keep" | "terminate";
  /** The config file read, if any. */
  configFile: string | undefined;
  help: boolean;
}

export function loadDaemonConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: argv,
      options: {
        config: { type: "string" },
        help: { type: "boolean", short: "h" },
        ...Object.fromEntries(ALL_KEYS.map((k) => [k.replaceAll("_", "-"), { type: "string" as const }])),
      },
    }).values;
  } catch (err) {
    throw new ConfigError(`${(err as Error).message} (see mitosd --help)`);
  }
  if (values.help) return { options: {}, cluster: undefined, shutdown: "keep", configFile: undefined, help: true };

  const flags: Record<string, string> = {};
  for (const k of ALL_KEYS) {
    const v = values[k.replaceAll("_", "-")];
    if (typeof v === "string") flags[k] = v;
  }
  const fromEnv: Record<string, string> = {};
  if (env.MITOS_HOST) fromEnv.host = env.MITOS_HOST;
  if (env.MITOS_PORT) fromEnv.port = env.MITOS_PORT;
  if (env.MITOS_DATA_DIR) fromEnv.data_dir = env.MITOS_DATA_DIR;
  if (env.MITOS_AUTH) fromEnv.auth = env.MITOS_AUTH;
  if (env.MITOS_SHUTDOWN) fromEnv.shutdown = env.MITOS_SHUTDOWN;

  let configFile = typeof values.config === "string" ? path.resolve(values.config) : undefined;
  let file: Record<string, unknown> = {};
  if (configFile) file = readConfigFile(configFile, true);
  const dataDir =
    flags.data_dir ?? fromEnv.data_dir ?? (typeof file.data_dir === "string" ? file.data_dir : defaultDataDir());
  if (!configFile) {
    const implicit = path.join(dataDir, "mitosd.json");
    if (fs.existsSync(implicit)) {
      configFile = implicit;
      file = readConfigFile(implicit, false);
    }
  }

  // One pass over every key: flag, else env, else file; each value checked where it came from.
  const limits: Partial<Limits> = {};
  const options: ServerOptions = { dataDir: path.resolve(dataDir) };
  let shutdown: DaemonConfig["shutdown"] = "keep";
  const cluster: Record<string, string | number> = {};
  for (const key of ALL_KEYS) {
    const raw = flags[key] ?? fromEnv[key];
    const where = key in flags ? flagOf(key) : key in fromEnv ? "the environment" : `${configFile}: ${key}`;
    const value: unknown = raw ?? file[key];
    if (value === undefined || key === "data_dir") continue;
    if (key === "host") {
      if (typeof value !== "string" || value === "") throw new ConfigError(`${where}: host must be a non-empty string`);
      options.host = value;
      continue;
    }
    if (key === "node" || (CLUSTER_KEYS.includes(key) && key !== "lease_seconds")) {
      if (typeof value !== "string" || value === "")
        throw new ConfigError(`${where}: ${key} must be a non-empty string`);
      cluster[key] = value;
      continue;
    }
    if (key === "domain") {
      if (typeof value !== "string" || !/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/i.test(value)) {
        throw new ConfigError(
          `${where}: domain must be a DNS name such as sandboxes.example.com, got ${JSON.stringify(value)}`,
        );
      }
      options.domain = value.toLowerCase();
      continue;
    }
    if (key === "net_range" || key === "dns_upstream") {
      if (typeof value !== "string" || value === "")
        throw new ConfigError(`${where}: ${key} must be a non-empty string`);
      const network = { ...options.network };
      if (key === "net_range") {
        if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(value))
          throw new ConfigError(`${where}: net_range must be an IPv4 CIDR, got ${JSON.stringify(value)}`);
        network.range = value;
      } else {
        const servers = value.split(",").map((s) => s.trim());
        if (servers.some((s) => !/^\d{1,3}(\.\d{1,3}){3}(:\d{1,5})?$/.test(s))) {
          throw new ConfigError(
            `${where}: dns_upstream must be ip[:port] entries separated by commas, got ${JSON.stringify(value)}`,
          );
        }
        network.upstream = servers;
      }
      options.network = network;
      continue;
    }
    if (key === "registry_auth_file" || key === "insecure_registries" || key === "registry_credentials") {
      options.registries = {
        ...options.registries,
        ...registryOption(key, value, where, key in flags || key in fromEnv),
      };
      continue;
    }
    if (key === "auth") {
      if (value !== "token" && value !== "none") {
        throw new ConfigError(`${where}: auth must be "token" or "none", got ${JSON.stringify(value)}`);
      }
      options.auth = value;
      continue;
    }
    if (key === "admission") {
      if (value !== "cow" && value !== "strict") {
        throw new ConfigError(`${where}: admission must be "cow" or "strict", got ${JSON.stringify(value)}`);
      }
      limits.admission = value;
      continue;
    }
    if (key === "memory_overcommit") {
      const x = typeof value === "string" && /^\d+(\.\d+)?$/.test(value) ? Number(value) : value;
      if (typeof x !== "number" || !Number.isFinite(x) || x < 1 || x > 1000) {
        throw new ConfigError(
          `${where}: memory_overcommit must be a number from 1 to 1000, got ${JSON.stringify(value)}`,
        );
      }
      limits.memoryOvercommit = x;
      continue;
    }
    if (key === "shutdown") {
      if (value !== "keep" && value !== "terminate") {
        throw new ConfigError(`${where}: shutdown must be "keep" or "terminate", got ${JSON.stringify(value)}`);
      }
      shutdown = value;
      continue;
    }
    const n = typeof value === "string" && /^\d+$/.test(value) ? Number(value) : value;
    const min = key === "port" ? 0 : 1;
    const max = key === "port" ? 65535 : Number.MAX_SAFE_INTEGER;
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new ConfigError(`${where}: ${key} must be a whole number in ${min}..${max}, got ${JSON.stringify(value)}`);
    }
    if (key === "port") options.port = n;
    else if (key === "body_limit_bytes") options.bodyLimit = n;
    else if (key === "max_message_bytes") options.maxMessageBytes = n;
    else if (key === "max_checkpoint_bytes") options.maxCheckpointBytes = n;
    else if (key === "checkpoint_retention") options.checkpointRetention = n;
    else if (key === "hibernate_idle_seconds") options.hibernateIdleSeconds = n;
    else if (key === "lease_seconds") cluster[key] = n;
    else limits[LIMIT_KEYS[key] as NumericLimit] = n;
  }
  if (options.auth === "none" && !isLoopback(options.host ?? "127.0.0.1")) {
    throw new ConfigError(
      `auth "none" is refused on ${options.host}: without a token anyone who reaches the port controls every sandbox. ` +
        "Listen on a loopback address (--host 127.0.0.1 or ::1), or keep the token (--auth token).",
    );
  }
  try {
    resolveLimits(limits);
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  options.limits = limits;
  return { options, cluster: clusterConfig(cluster), shutdown, configFile, help: false };
}

/** One of the registry keys, checked (the engine checks the registry names themselves). */
function registryOption(
  key: "registry_auth_file" | "insecure_registries" | "registry_credentials",
  value: unknown,
  where: string,
  fromFlag: boolean,
): Partial<NonNullable<ServerOptions["registries"]>> {
  if (key === "registry_auth_file") {
    if (typeof value !== "string" || value === "") throw new ConfigError(`${where}: ${key} must be a file path`);
    return { authFile: path.resolve(value) };
  }
  if (key === "insecure_registries") {
    const list = typeof value === "string" ? value.split(",").map((r) => r.trim()) : value;
    if (!Array.isArray(list) || list.some((r) => typeof r !== "string" || r === "")) {
      throw new ConfigError(
        `${where}: insecure_registries must be a list of host[:port], got ${JSON.stringify(value)}`,
      );
    }
    return { insecure: list as string[] };
  }
  // Secrets on a command line are readable by every local user (ps): the file only.
  if (fromFlag) throw new ConfigError(`${where}: registry_credentials is read from the config file only`);
  const ok =
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    Object.values(value).every(
      (c) =>
        typeof c === "object" &&
        c !== null &&
        typeof (c as { username?: unknown }).username === "string" &&
        typeof (c as { password?: unknown }).password === "string",
    );
  if (!ok) {
    throw new ConfigError(
      `${where}: registry_credentials must be {"host[:port]": {"username": "...", "password": "..."}}`,
    );
  }
  return { credentials: value as Record<string, { username: string; password: string }> };
}

function clusterConfig(c: Record<string, string | number>): ClusterConfig | undefined {
  if (c.node === undefined) {
    const stray = Object.keys(c);
    if (stray.length > 0) {
      throw new ConfigError(
        `${stray.map(flagOf).join(", ")} only apply to a node agent: add --node <name> or drop them`,
      );
    }
    return undefined;
  }
  const leaseSeconds = (c.lease_seconds as number | undefined) ?? 15;
  if (leaseSeconds < 3)
    throw new ConfigError(`lease_seconds must be at least 3 (renewed every third), got ${leaseSeconds}`);
  if (c.advertise_url !== undefined && !/^https?:\/\/[^/]+$/.test(String(c.advertise_url))) {
    throw new ConfigError(`advertise_url must look like http://host:port, got ${JSON.stringify(c.advertise_url)}`);
  }
  return {
    node: String(c.node),
    kubeconfig: c.kubeconfig as string | undefined,
    namespace: (c.namespace as string | undefined) ?? "mitos-system",
    advertiseUrl: c.advertise_url as string | undefined,
    gatewayTokenFile: c.gateway_token_file as string | undefined,
    leaseSeconds,
  };
}

function readConfigFile(file: string, explicit: boolean): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError(`config file ${file} must hold a JSON object`);
  }
  const unknown = Object.keys(parsed).filter((k) => !ALL_KEYS.includes(k));
  if (unknown.length > 0) {
    throw new ConfigError(
      `config file ${file}${explicit ? "" : " (read because it is in the data dir)"} has unknown key${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => JSON.stringify(k)).join(", ")}; known keys: ${ALL_KEYS.join(", ")}`,
    );
  }
  const o = parsed as Record<string, unknown>;
  if (o.data_dir !== undefined && (typeof o.data_dir !== "string" || o.data_dir === "")) {
    throw new ConfigError(`${file}: data_dir must be a non-empty string`);
  }
  return o;
}

/** Loopback only: 127.0.0.0/8, ::1, localhost. Anything else reaches beyond this host. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}
