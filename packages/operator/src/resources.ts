// The Mitos custom resources (deploy/crds/) as TypeScript types, and the
// checks the API server cannot make (Kubernetes 1.20 has no CEL).

export const GROUP = "mitos.run";
export const VERSION = "v1";
export const API_VERSION = `${GROUP}/${VERSION}`;

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface TemplateSpec {
  image?: string;
  packages?: string[];
  init?: string[];
  env?: Record<string, string>;
  resources?: { vcpuCount?: number; memSizeMiB?: number; diskSizeMiB?: number };
  network?: { egress?: "deny" | "allow"; allowOut?: string[]; denyOut?: string[] };
}

export interface PoolNodeStatus {
  name: string;
  target: number;
  warm?: number;
  ready?: boolean;
}

export interface SandboxPool {
  apiVersion: string;
  kind: "SandboxPool";
  metadata: ObjectMeta;
  spec: {
    template: TemplateSpec;
    min: number;
    max?: number;
    scope: "PerNode" | "Cluster";
    nodeSelector?: Record<string, string>;
  };
  status?: {
    phase?: "Pending" | "Ready" | "Degraded" | "Invalid";
    message?: string;
    observedGeneration?: number;
    warm?: number;
    nodeCount?: number;
    nodes?: PoolNodeStatus[];
  };
}

export type SandboxPhase = "Pending" | "Scheduled" | "Ready" | "Failed" | "Lost" | "Terminated";

export interface SandboxStatus {
  phase?: SandboxPhase;
  message?: string;
  node?: string;
  sandboxId?: string;
  endpoint?: string;
  forkTimeMs?: number;
  reservedBytes?: number;
  /** Nominal guest RAM promised under the node's caps until it reports the sandbox (MiB). */
  reservedGuestMiB?: number;
  children?: string[];
  memory?: { privateBytes?: number; sharedBytes?: number };
  scheduledAt?: string;
  readyAt?: string;
}

export interface SandboxResource {
  apiVersion: string;
  kind: "Sandbox";
  metadata: ObjectMeta;
  spec: {
    pool?: string;
    checkpoint?: string;
    forkOf?: { sandbox: string; count: number };
    timeoutSeconds?: number;
    env?: Record<string, string>;
  };
  status?: SandboxStatus;
}

/** Mitos sandbox and template ids (API.md); a resource's name becomes one. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** What the schema cannot say: exactly one source, names usable as Mitos ids. Undefined when valid. */
export function sandboxProblem(sb: SandboxResource): string | undefined {
  if (!ID_PATTERN.test(sb.metadata.name)) {
    return `name ${sb.metadata.name} is not a Mitos sandbox id: use letters, digits, - and _ (no dots), at most 64`;
  }
  const sources = [sb.spec.pool, sb.spec.checkpoint, sb.spec.forkOf].filter((x) => x !== undefined).length;
  if (sources !== 1) return "set exactly one of spec.pool, spec.checkpoint and spec.forkOf";
  return undefined;
}

export function poolProblem(p: SandboxPool): string | undefined {
  if (!ID_PATTERN.test(p.metadata.name)) {
    return `name ${p.metadata.name} is not a Mitos template id: use letters, digits, - and _ (no dots), at most 64`;
  }
  if (p.spec.max !== undefined && p.spec.max < p.spec.min)
    return `spec.max (${p.spec.max}) is below spec.min (${p.spec.min})`;
  return undefined;
}

/** The Mitos sandbox ids a resource stands for once Ready (a fork has one per child). */
export function sandboxIds(sb: SandboxResource): string[] {
  if (sb.spec.forkOf) return sb.status?.children ?? [];
  return sb.status?.sandboxId ? [sb.status.sandboxId] : [];
}

/** Children of a fork resource are named <resource>-<i>. */
export function childIds(name: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${name}-${i}`);
}

/** An owner reference to a Mitos resource (list items may come without apiVersion and kind, so they are named here). */
export function ownerRef(kind: "Sandbox" | "SandboxPool", meta: ObjectMeta): OwnerReference {
  return { apiVersion: API_VERSION, kind, name: meta.name, uid: meta.uid ?? "", blockOwnerDeletion: false };
}
