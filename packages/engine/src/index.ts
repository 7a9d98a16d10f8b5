export type {
  AgentInfo,
  ExecHandle,
  ExecRequest,
  ExecResult,
  FileInfo,
  FileOwner,
  FileType,
  ForkNotifyResult,
  ProcessInfo,
} from "./agent/client.js";
export { AgentClient } from "./agent/client.js";
export type { BuildEvent, BuildPhase } from "./build-log.js";
export type { CheckpointManifest } from "./checkpoint-store.js";
export { defaultDataDir, defaultShmDir, shmDirFor } from "./config.js";
export type { EngineOptions, SandboxInfo, SandboxState, TemplateInfo, TemplateSpec } from "./engine.js";
export { Engine, TEMPLATE_WAITS } from "./engine.js";
export type { ErrorCode } from "./errors.js";
export { AgentGoneError, GuestError, MitosError, noCheckpoint, noSandbox } from "./errors.js";
export type { GuestLimits } from "./guest-limits.js";
export type { BuildProgress, ImageRecipe, ImageSet } from "./image/build.js";
export { BUILTIN_RECIPES, ensureImages } from "./image/build.js";
export type { RegistryOptions } from "./image/registries.js";
export type { CodeContext, CodeError, CodeEvent, CodeResult, RunCodeOptions, RunCodeOutcome } from "./interpreter.js";
export { INTERPRETER_PORT, Interpreter } from "./interpreter.js";
export type { Limits, OwnerLimits, Usage } from "./limits.js";
export { defaultLimits, LIMIT_NAMES, OWNER_LIMIT_NAMES, resolveLimits, SpendCaps } from "./limits.js";
export type { HostMemory, VmMemory } from "./metering.js";
export type { Egress, NetworkPolicy } from "./network/policy.js";
export { checkPolicy } from "./network/policy.js";
export type { Accel, AccelChoice } from "./qemu/accel.js";
export { chooseAccel } from "./qemu/accel.js";
export { DEFAULT_SPARE_VMS } from "./spares.js";
export type { BootOptions, MachineSpec, Snapshot, VmExit } from "./vm.js";
export { ID_RE, Vm } from "./vm.js";
