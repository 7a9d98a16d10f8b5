// @mitos/sdk: TypeScript client for mitosd (shared/design API.md).

export { type ClientOptions, DEFAULT_BASE_URL, resolveConfig, tokenFilePath } from "./config.js";
export {
  BodyTooLargeError,
  CanceledError,
  ConflictError,
  type ErrorCode,
  ExecTimeoutError,
  ForbiddenError,
  InternalError,
  InvalidInputError,
  MitosError,
  NotFoundError,
  QuotaExceededError,
  RateLimitedError,
  SandboxExpiredError,
  TimeoutTooLargeError,
  UnauthorizedError,
  UnavailableError,
} from "./errors.js";
export { Pty, type PtyOptions } from "./pty.js";
export { ExecHandle, type ForkOptions, Sandbox, SandboxFiles } from "./sandbox.js";
export { type CreateSandboxOptions, type CreateTemplateOptions, SandboxServer } from "./server.js";
export type {
  Accel,
  CheckpointInfo,
  CodeContext,
  E2bKey,
  ExecOptions,
  ExecResult,
  Execution,
  ExecutionError,
  ExposedPort,
  FileInfo,
  Health,
  Limits,
  MemoryUsage,
  Metering,
  NetworkPolicy,
  PoolInfo,
  ProcessInfo,
  Result,
  RunCodeOptions,
  SandboxInfo,
  SandboxMemory,
  SandboxState,
  TemplateBuildEvent,
  TemplateInfo,
  TemplateSpec,
  TimeoutInfo,
} from "./types.js";
