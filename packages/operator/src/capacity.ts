// What a node agent tells the cluster about its host, carried in an
// annotation of its Lease (renewed every third of the lease): the controller
// schedules from it and the gateway routes by it.

export const CAPACITY_ANNOTATION = "mitos.run/capacity";
export const LEASE_PREFIX = "mitos-node-";

export interface NodeCapacity {
  /** Where the gateway reaches this node's mitosd. */
  endpoint: string;
  /** Host RAM. */
  memoryTotalBytes: number;
  /** What sandboxes use, copy-on-write aware (mitosd's metering: shared pages once). */
  memoryUsedBytes: number;
  /** The host kernel's MemAvailable. */
  memoryAvailableBytes: number;
  /** Templates ready on the node. */
  templates: string[];
  /** Warm (restored, paused) VMs per template. */
  warm: Record<string, number>;
  /** Learnt per template: bytes a fork child dirties on average (its private pages). */
  forkCostBytes: Record<string, number>;
  /** Nominal guest RAM of each template: what the node's caps count per sandbox, and a create's cost until a fork cost is learnt. */
  templateMemoryBytes: Record<string, number>;
  /** Sandbox ids live on the node. */
  sandboxes: string[];
  /** Checkpoint ids stored on the node. */
  checkpoints: string[];
  accel: string;
  /** Room left under the node's spend caps (mitosd refuses beyond them: quota_exceeded). */
  free: { sandboxes: number; guestMemoryMib: number };
  /** The Kubernetes Node's labels (for pools' node selectors). */
  labels: Record<string, string>;
}

export function encodeCapacity(c: NodeCapacity): string {
  return JSON.stringify(c);
}

/** Undefined when absent or not what a node agent writes. */
export function decodeCapacity(text: string | undefined): NodeCapacity | undefined {
  if (!text) return undefined;
  try {
    const c = JSON.parse(text) as Partial<NodeCapacity>;
    if (typeof c.endpoint !== "string" || typeof c.memoryTotalBytes !== "number") return undefined;
    return {
      endpoint: c.endpoint,
      memoryTotalBytes: c.memoryTotalBytes,
      memoryUsedBytes: c.memoryUsedBytes ?? 0,
      memoryAvailableBytes: c.memoryAvailableBytes ?? 0,
      templates: c.templates ?? [],
      warm: c.warm ?? {},
      forkCostBytes: c.forkCostBytes ?? {},
      templateMemoryBytes: c.templateMemoryBytes ?? {},
      sandboxes: c.sandboxes ?? [],
      checkpoints: c.checkpoints ?? [],
      accel: c.accel ?? "unknown",
      labels: c.labels ?? {},
      free: c.free ?? { sandboxes: Number.MAX_SAFE_INTEGER, guestMemoryMib: Number.MAX_SAFE_INTEGER },
    };
  } catch {
    return undefined;
  }
}

export interface NodeView {
  name: string;
  capacity: NodeCapacity;
  /** Lease renewed recently enough. */
  live: boolean;
  renewedAt: number;
  leaseSeconds: number;
}
