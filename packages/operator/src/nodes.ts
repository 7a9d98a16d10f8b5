// Node views from node agents' Leases, and where each Mitos sandbox id lives:
// shared by the controller (scheduling) and the gateway (routing).

import type { V1Lease } from "@kubernetes/client-node";
import { CAPACITY_ANNOTATION, decodeCapacity, LEASE_PREFIX, type NodeView } from "./capacity.js";
import type { SandboxResource } from "./resources.js";

export function nodeViews(leases: V1Lease[], now = Date.now()): NodeView[] {
  const out: NodeView[] = [];
  for (const l of leases) {
    const name = l.spec?.holderIdentity;
    if (!l.metadata?.name?.startsWith(LEASE_PREFIX) || !name) continue;
    const capacity = decodeCapacity(l.metadata.annotations?.[CAPACITY_ANNOTATION]);
    if (!capacity) continue;
    const leaseSeconds = l.spec?.leaseDurationSeconds ?? 15;
    const renewed = l.spec?.renewTime ? new Date(l.spec.renewTime).getTime() : 0;
    out.push({ name, capacity, live: now - renewed < leaseSeconds * 1000, renewedAt: renewed, leaseSeconds });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

export interface SandboxIndex {
  nodeOf(id: string): string | undefined;
  templateOf(id: string): string | undefined;
  /** The resource that stands for a Mitos sandbox id (its own, or the fork that made it). */
  resourceOf(id: string): SandboxResource | undefined;
}

/** Resources' statuses first (authoritative for what they made), then what nodes report. */
export function indexSandboxes(sandboxes: SandboxResource[], nodes: NodeView[]): SandboxIndex {
  const node = new Map<string, string>();
  const template = new Map<string, string>();
  const resource = new Map<string, SandboxResource>();
  for (const n of nodes) for (const id of n.capacity.sandboxes) node.set(id, n.name);
  const byName = new Map(sandboxes.map((s) => [s.metadata.name, s]));
  const templateOfResource = (s: SandboxResource, depth = 0): string | undefined => {
    if (s.spec.pool) return s.spec.pool;
    const parent = s.spec.forkOf?.sandbox;
    if (!parent || depth > 64) return undefined;
    const p = byName.get(parent) ?? resource.get(parent);
    return p ? templateOfResource(p, depth + 1) : template.get(parent);
  };
  for (const s of sandboxes) {
    const ids = s.spec.forkOf ? (s.status?.children ?? []) : s.status?.sandboxId ? [s.status.sandboxId] : [];
    for (const id of ids) {
      if (s.status?.node) node.set(id, s.status.node);
      resource.set(id, s);
    }
  }
  for (const s of sandboxes) {
    const t = templateOfResource(s);
    const ids = s.spec.forkOf ? (s.status?.children ?? []) : s.status?.sandboxId ? [s.status.sandboxId] : [];
    if (t) for (const id of ids) template.set(id, t);
  }
  return {
    nodeOf: (id) => node.get(id) ?? (byName.get(id)?.status?.node as string | undefined),
    templateOf: (id) =>
      template.get(id) ?? (byName.get(id) ? templateOfResource(byName.get(id) as SandboxResource) : undefined),
    resourceOf: (id) => resource.get(id) ?? byName.get(id),
  };
}
