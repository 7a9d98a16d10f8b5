// The one place that talks to the Kubernetes API (client-node): the Mitos
// custom resources, node Leases, and watched caches of them.

import {
  type ApiException,
  CoordinationV1Api,
  CustomObjectsApi,
  type Informer,
  KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  makeInformer,
  type ObjectCache,
  PatchStrategy,
  setHeaderOptions,
  type V1Lease,
} from "@kubernetes/client-node";
import { GROUP, type SandboxPool, type SandboxResource, type SandboxStatus, VERSION } from "./resources.js";

/** A kubeconfig file, or the pod's service account; a clear error when neither is usable. */
export function loadKubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (file) {
    try {
      kc.loadFromFile(file);
    } catch (e) {
      throw new Error(`cannot read kubeconfig ${file}: ${(e as Error).message}`);
    }
  } else {
    if (!process.env.KUBERNETES_SERVICE_HOST) {
      throw new Error("no --kubeconfig given and not running in a pod (KUBERNETES_SERVICE_HOST is unset)");
    }
    kc.loadFromCluster();
  }
  if (!kc.getCurrentCluster()?.server) throw new Error(`kubeconfig ${file ?? "(in-cluster)"} names no cluster server`);
  return kc;
}

/** The HTTP status of a failed Kubernetes call (0 when it never got one). */
export function statusOf(err: unknown): number {
  const code = (err as ApiException<unknown>)?.code;
  return typeof code === "number" ? code : 0;
}

const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

type Plural = "sandboxes" | "sandboxpools";

export class Kube {
  readonly objects: CustomObjectsApi;
  readonly coordination: CoordinationV1Api;

  constructor(
    readonly kc: KubeConfig,
    readonly namespace: string,
  ) {
    this.objects = kc.makeApiClient(CustomObjectsApi);
    this.coordination = kc.makeApiClient(CoordinationV1Api);
  }

  /** One call that needs the API server, the CRDs and our rights: fails early with what to fix. */
  async check(): Promise<void> {
    try {
      await this.objects.listNamespacedCustomObject({ ...this.ref("sandboxes"), limit: 1 });
    } catch (e) {
      const s = statusOf(e);
      const why =
        s === 404
          ? "the Mitos CRDs are not installed (kubectl apply -f deploy/crds), or the namespace does not exist"
          : s === 401 || s === 403
            ? `the credentials may not list sandboxes.mitos.run in ${this.namespace} (deploy/rbac.yaml)`
            : `the API server did not answer: ${(e as Error).message}`;
      throw new Error(`cannot use the Kubernetes API at ${this.kc.getCurrentCluster()?.server}: ${why}`);
    }
  }

  private ref(plural: Plural) {
    return { group: GROUP, version: VERSION, namespace: this.namespace, plural };
  }

  async listSandboxes(): Promise<SandboxResource[]> {
    return ((await this.objects.listNamespacedCustomObject(this.ref("sandboxes"))) as { items: SandboxResource[] })
      .items;
  }

  async listPools(): Promise<SandboxPool[]> {
    return ((await this.objects.listNamespacedCustomObject(this.ref("sandboxpools"))) as { items: SandboxPool[] })
      .items;
  }

  async getSandbox(name: string): Promise<SandboxResource | undefined> {
    try {
      return (await this.objects.getNamespacedCustomObject({ ...this.ref("sandboxes"), name })) as SandboxResource;
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      throw e;
    }
  }

  async createSandbox(sb: Omit<SandboxResource, "status">): Promise<SandboxResource> {
    return (await this.objects.createNamespacedCustomObject({ ...this.ref("sandboxes"), body: sb })) as SandboxResource;
  }

  /** Deletes in the background (dependents are garbage-collected); false when it was already gone. */
  async deleteSandbox(name: string): Promise<boolean> {
    try {
      await this.objects.deleteNamespacedCustomObject({
        ...this.ref("sandboxes"),
        name,
        propagationPolicy: "Background",
      });
      return true;
    } catch (e) {
      if (statusOf(e) === 404) return false;
      throw e;
    }
  }

  /**
   * Merges into a sandbox's status. With `resourceVersion` the write only
   * succeeds against exactly that version (409 otherwise): how the controller
   * never schedules one sandbox twice.
   */
  async patchSandboxStatus(name: string, status: SandboxStatus, resourceVersion?: string): Promise<SandboxResource> {
    return (await this.objects.patchNamespacedCustomObjectStatus(
      {
        ...this.ref("sandboxes"),
        name,
        body: { metadata: resourceVersion ? { resourceVersion } : {}, status },
      },
      merge,
    )) as SandboxResource;
  }

  /** Adds owner references (garbage collection deletes the sandbox with its owner); resourceVersion-checked. */
  async setSandboxOwners(
    name: string,
    ownerReferences: NonNullable<SandboxResource["metadata"]["ownerReferences"]>,
    resourceVersion: string | undefined,
  ): Promise<SandboxResource> {
    return (await this.objects.patchNamespacedCustomObject(
      {
        ...this.ref("sandboxes"),
        name,
        body: { metadata: { ownerReferences, ...(resourceVersion ? { resourceVersion } : {}) } },
      },
      merge,
    )) as SandboxResource;
  }

  async patchPoolStatus(name: string, status: SandboxPool["status"], resourceVersion?: string): Promise<SandboxPool> {
    return (await this.objects.patchNamespacedCustomObjectStatus(
      {
        ...this.ref("sandboxpools"),
        name,
        body: { metadata: resourceVersion ? { resourceVersion } : {}, status },
      },
      merge,
    )) as SandboxPool;
  }

  async getLease(name: string): Promise<V1Lease | undefined> {
    try {
      return await this.coordination.readNamespacedLease({ name, namespace: this.namespace });
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      throw e;
    }
  }

  async createLease(lease: V1Lease): Promise<V1Lease> {
    return this.coordination.createNamespacedLease({ namespace: this.namespace, body: lease });
  }

  async replaceLease(lease: V1Lease): Promise<V1Lease> {
    return this.coordination.replaceNamespacedLease({
      name: lease.metadata?.name ?? "",
      namespace: this.namespace,
      body: lease,
    });
  }

  sandboxCache(): WatchedCache<SandboxResource> {
    return new WatchedCache(this.kc, `/apis/${GROUP}/${VERSION}/namespaces/${this.namespace}/sandboxes`, () =>
      this.objects.listNamespacedCustomObject(this.ref("sandboxes")),
    );
  }

  poolCache(): WatchedCache<SandboxPool> {
    return new WatchedCache(this.kc, `/apis/${GROUP}/${VERSION}/namespaces/${this.namespace}/sandboxpools`, () =>
      this.objects.listNamespacedCustomObject(this.ref("sandboxpools")),
    );
  }

  leaseCache(): WatchedCache<V1Lease> {
    return new WatchedCache(this.kc, `/apis/coordination.k8s.io/v1/namespaces/${this.namespace}/leases`, () =>
      this.coordination.listNamespacedLease({ namespace: this.namespace }),
    );
  }
}

/**
 * A list+watch cache (client-node's informer) that restarts itself after a
 * watch error, and calls `onChange` after every event.
 */
export class WatchedCache<T extends { metadata?: { name?: string } }> {
  // Custom objects arrive as plain JSON (timestamps as strings), so the cache
  // holds them as given and types them here.
  private readonly informer: Informer<KubernetesObject> & ObjectCache<KubernetesObject>;
  private stopped = false;
  private synced: Promise<void> | undefined;

  constructor(kc: KubeConfig, path: string, list: () => Promise<unknown>) {
    this.informer = makeInformer<KubernetesObject>(
      kc,
      path,
      async () => (await list()) as KubernetesListObject<KubernetesObject>,
    );
  }

  list(): T[] {
    return [...this.informer.list()] as unknown as T[];
  }

  get(name: string): T | undefined {
    return this.list().find((o) => o.metadata?.name === name);
  }

  /** Starts the watch; resolves once the first list is in. */
  start(onChange: (kind: "add" | "update" | "delete", obj: T) => void, onError: (err: unknown) => void): Promise<void> {
    this.informer.on("add", (o) => onChange("add", o as unknown as T));
    this.informer.on("update", (o) => onChange("update", o as unknown as T));
    this.informer.on("delete", (o) => onChange("delete", o as unknown as T));
    this.informer.on("error", (err) => {
      if (this.stopped) return;
      onError(err);
      setTimeout(() => {
        if (!this.stopped) void this.informer.start().catch(onError);
      }, 1000).unref();
    });
    this.synced ??= this.informer.start();
    return this.synced;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.informer.stop();
  }
}
