// Public shapes of the lifecycle API's objects, in camelCase (the wire is
// snake_case; see wire.ts).

export type SandboxState = "starting" | "ready" | "paused" | "terminated" | "failed";
export type Accel = "kvm" | "tcg";

export interface MemoryUsage {
  /** Pages only this sandbox holds (its copy-on-write copies and VMM heap). */
  privateBytes: number;
  /** Base pages it still shares with its template and siblings. */
  sharedBytes: number;
}

export interface SandboxInfo {
  id: string;
  templateId: string;
  /** The sandbox this one was forked from; null when made from a template. */
  parentId: string | null;
  state: SandboxState;
  endpoint: string | undefined;
  /** ISO 8601. */
  createdAt: string;
  /** When mitosd reaps it (Unix seconds). */
  deadlineUnix: number | undefined;
  forkTimeMs: number;
  accel: Accel | undefined;
  memory: MemoryUsage | undefined;
  /** Paused with its memory freed (saved to disk): `pause({ hibernate: true })`, or mitosd's idle timer. */
  hibernated: boolean;
  /** Its network policy; undefined: no network device. */
  network: NetworkPolicy | undefined;
  /** `<domain>:<port>` under which guest port N is served as host `N-<id>.<domain>` (docs/ports.md). */
  domain: string | undefined;
  /** The tenant it belongs to; null: an admin's (docs/security.md "Keys"). */
  tenant: string | null;
  /** Reaches this sandbox's runtime API only (exec, files, PTY, ports): hand it to an agent inside. */
  token: string | undefined;
  /** May only fork this sandbox; the fork's answer carries the children's tokens. */
  forkToken: string | undefined;
}

/** A guest port made reachable: `POST /v1/sandboxes/{id}/expose/{port}`. */
export interface ExposedPort {
  port: number;
  /** Path-routed URL on mitosd (works wherever mitosd's address does). */
  url: string;
  /** Host-routed `host:port` (`<port>-<id>.<domain>:<port>`). */
  host: string;
  /** Access token for this port alone, sent in `tokenHeader` (instead of the API token). */
  token: string;
  tokenHeader: string;
}

/**
 * Who a sandbox may reach (docs/network.md). Rules: an IPv4 CIDR or address,
 * a name ("api.example.com") or "*.example.com", each optionally with ":port".
 * Deny rules win; the host, other sandboxes and link-local are always denied.
 */
export interface NetworkPolicy {
  /** "deny" (default): only allowOut passes; "allow": everything public but denyOut. */
  egress: "deny" | "allow";
  allowOut?: string[];
  denyOut?: string[];
}

export interface TemplateSpec {
  /** Image to start from: "base", "python", or an OCI image reference (docs/templates.md). */
  image?: string;
  packages?: string[];
  /** Shell commands run once in the booted template before it is frozen. */
  init?: string[];
  env?: Record<string, string>;
  resources?: { vcpuCount?: number; memSizeMib?: number };
  /** Seconds the booted guest settles before init runs (0-600, default 0). */
  initWaitSeconds?: number;
  /** Limit on each init command (default 600, max 3600). */
  initTimeoutSeconds?: number;
  /** A workspace disk of this size at /workspace, on the host: files may exceed guest RAM (docs/disks.md). */
  diskSizeMib?: number;
  /** A network device, and the policy its sandboxes start with (default: no NIC). */
  network?: NetworkPolicy;
  /** What its sandboxes' commands may take (docs/security.md "Hostile guests"); unset ones: the defaults. */
  guest?: GuestLimits;
}

export interface GuestLimits {
  /** Memory of all commands together (MiB; default: guest RAM less max(64 MiB, an eighth)). */
  commandMemoryMib?: number;
  /** Processes of all commands together (default 1024). */
  commandPids?: number;
  /** The RAM-backed writable layer (MiB; default: half of guest RAM). */
  writableMib?: number;
  /** Exec output the host takes per second (bytes; default 32 MiB). */
  outputBytesPerSecond?: number;
}

export interface TemplateInfo {
  id: string;
  ready: boolean;
  createdAt: string;
  creationTimeMs: number;
  /** Absent from servers that do not report them. */
  resources?: { vcpuCount: number; memSizeMib: number };
  /** The OCI image it was built from, pinned by digest. */
  image?: { reference: string; digest: string };
  /** A key of everything that shaped it: a changed image, package, step, env or size is a new version. */
  version?: string;
  /** How many init steps it ran. */
  steps?: number;
  /** Guest limits it was built with (absent: the defaults). */
  guest?: GuestLimits;
}

/** One event of a template build as it happens (`createTemplate(..., { onEvent })`). */
export type TemplateBuildEvent =
  | { type: "phase"; phase: string; message: string }
  /** Step `step` of `of` (1-based) starts; `cached`: taken from the step cache, not run. */
  | { type: "step"; step: number; of: number; command: string; cached: boolean }
  | { type: "output"; step: number; stream: "stdout" | "stderr"; data: string }
  | { type: "step_done"; step: number; exitCode: number; ms: number };

/** Spend caps in force and what is in use (GET /v1/limits). */
export interface Limits {
  /** "cow": admitted by real use with a free-memory floor; "strict": by nominal guest RAM. */
  admission: "cow" | "strict";
  memoryFloorMib: number;
  memoryOvercommit: number;
  maxSandboxes: number;
  maxGuestMemoryMib: number;
  maxForkCount: number;
  maxLifetimeSeconds: number;
  defaultTimeoutSeconds: number;
  maxStreamsPerSandbox: number;
  usage: {
    sandboxes: number;
    guestMemoryMib: number;
    /** cow admission: the host's RAM, what it has available, what sandboxes hold and what is reserved for ones starting. */
    memory?: { totalMib: number; availableMib: number; committedMib: number; pendingMib: number };
  };
}

/** A sandbox saved to mitosd's disk store (POST /v1/sandboxes/{id}/checkpoints). */
export interface CheckpointInfo {
  id: string;
  name: string | null;
  sandboxId: string;
  templateId: string;
  createdAt: string;
  /** Compressed bytes of every chunk it names. */
  bytes: number;
  /** Of those, the bytes it added to the store (the rest are shared with earlier checkpoints). */
  addedBytes: number;
}

/** A tenant's own caps beside the host's (an unset one is not checked). */
export interface TenantLimits {
  maxSandboxes?: number;
  maxGuestMemoryMib?: number;
  maxForkCount?: number;
  maxLifetimeSeconds?: number;
}

/** What `SandboxServer.createKey` makes: an admin key, or a tenant's (with the tenant's caps when given). */
export interface CreateKeyOptions {
  scope: "admin" | "tenant";
  tenant?: string;
  name?: string;
  limits?: TenantLimits;
}

/** An API key of this server (docs/security.md "Keys"); `key` only in the answer that created it. */
export interface ApiKey {
  id: string;
  name: string;
  /** Its first characters, to tell keys apart. */
  prefix: string;
  scope: "admin" | "tenant";
  tenant: string | null;
  /** The tenant's caps (tenant keys). */
  limits: TenantLimits | null;
  createdAt: string;
  key?: string;
}

/** An E2B API key of this server (docs/e2b.md); `key` only in the answer that created it. */
export interface E2bKey {
  id: string;
  name: string;
  /** Its first characters, to tell keys apart. */
  prefix: string;
  createdAt: string;
  key?: string;
}

export interface Health {
  status: string;
  version: string;
  /** "none" when mitosd runs with --auth none (loopback only). */
  auth: "token" | "none";
  accel: Accel;
  templates: number;
  sandboxes: number;
}

export interface PoolInfo {
  template: string;
  warm: number;
  target: number;
  claimed: number;
}

export interface SandboxMemory extends MemoryUsage {
  id: string;
}

export interface Metering {
  sandboxes: SandboxMemory[];
  /** Host totals, each shared base page counted once. */
  host: MemoryUsage & { totalBytes?: number };
}

export interface TimeoutInfo {
  deadlineUnix: number;
  timeoutSeconds: number;
}

export interface FileInfo {
  name: string;
  path: string;
  isDir: boolean;
  size: number;
  /** Permission and type bits. */
  mode: number;
  modifiedAtUnix: number;
}

export interface ProcessInfo {
  pid: number;
  ppid: number;
  command: string;
  /** One letter from /proc/<pid>/stat (R, S, Z, ...). */
  state: string;
  rssBytes: number;
}

export interface ExecResult {
  /** 124 when the command was killed at its deadline. */
  exitCode: number;
  stdout: string;
  stderr: string;
  execTimeMs: number;
  /** Set when the guest reported a problem running the command. */
  error?: string;
}

export interface ExecOptions {
  /** Server-side deadline; above the server's ceiling the call fails with TimeoutTooLargeError. */
  timeoutSeconds?: number;
  env?: Record<string, string>;
  cwd?: string;
  /**
   * Run `cmd` directly with these arguments instead of through `/bin/sh -c`
   * (argv = [cmd, ...args]). Pass `[]` to run `cmd` without a shell.
   */
  args?: string[];
  /** Receives stdout as it arrives, decoded as UTF-8. */
  onStdout?: (chunk: string) => void;
  /** Receives stderr as it arrives, decoded as UTF-8. */
  onStderr?: (chunk: string) => void;
  signal?: AbortSignal;
}

/** One output of a cell: the main result (the cell's value) or a display (a plot, a table). */
export interface Result {
  /** True for the cell's value (`Out[n]`), false for displays such as plots. */
  isMainResult: boolean;
  /** Every representation, by MIME type; images are base64 text. */
  data: Record<string, string>;
  text?: string;
  html?: string;
  markdown?: string;
  svg?: string;
  /** Base64 PNG. */
  png?: string;
  /** Base64 JPEG. */
  jpeg?: string;
  latex?: string;
  /** application/json, as JSON text. */
  json?: string;
}

export interface ExecutionError {
  /** The exception's class, e.g. ZeroDivisionError; TimeoutError when the cell hit its timeout. */
  name: string;
  value: string;
  traceback: string;
}

/** A cell's outcome, shaped as E2B's code interpreter returns it. */
export interface Execution {
  results: Result[];
  logs: { stdout: string[]; stderr: string[] };
  error?: ExecutionError;
  /** The main result's text (the cell's value), if it had one. */
  text?: string;
  /** 0 ok, 1 the code raised, 124 interrupted at its timeout, 127 no kernel in this sandbox. */
  exitCode: number;
}

export interface RunCodeOptions {
  /** "python" (the default). */
  language?: string;
  /** Run in this context (see createCodeContext); default: the sandbox's default context. */
  context?: string | CodeContext;
  /** The cell is interrupted after this long (the context keeps its variables); default: the server's ceiling. */
  timeoutSeconds?: number;
  /** Environment variables for this cell only. */
  envs?: Record<string, string>;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onResult?: (result: Result) => void;
  onError?: (error: ExecutionError) => void;
  signal?: AbortSignal;
}

/** An independent kernel in a sandbox: its own variables and imports. */
export interface CodeContext {
  id: string;
  language: string;
  cwd: string;
}
