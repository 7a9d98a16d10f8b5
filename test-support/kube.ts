// A real Kubernetes control plane for the cluster tests: etcd and
// kube-apiserver (optionally kube-controller-manager and kube-scheduler) on
// free loopback ports, built by scripts/build-kube.sh from Debian's source
// package. No kubelet: tests play it (Node objects kept Ready by hand).

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import {
  CoordinationV1Api,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  V1MicroTime,
} from "@kubernetes/client-node";
import { freePort } from "./free-port.js";
import { type Daemon, repoRoot, startMitosd } from "./mitosd.js";

export { freePort };

export const KUBE_BIN = process.env.MITOS_KUBE_DIR ?? "/var/cache/mitos-kube";

export interface ControlPlane {
  url: string;
  token: string;
  kubeconfigPath: string;
  dir: string;
  /** Runs kubectl against this cluster; returns stdout. Throws with stderr on failure. */
  kubectl(args: string[], input?: string): string;
  /** Starts kube-controller-manager (+ kube-scheduler with scheduler: true): garbage collection, DaemonSets. */
  startControllers(opts?: { scheduler?: boolean }): Promise<void>;
  stop(): Promise<void>;
}

export function kubeAvailable(): boolean {
  return fs.existsSync(path.join(KUBE_BIN, "kube-apiserver")) && whichEtcd() !== undefined;
}

function whichEtcd(): string | undefined {
  for (const p of ["/usr/bin/etcd", "/usr/local/bin/etcd"]) if (fs.existsSync(p)) return p;
  return undefined;
}

/** Starts etcd and kube-apiserver, installs the Mitos CRDs and waits for them to be established. */
export async function startControlPlane(opts: { installCrds?: boolean } = {}): Promise<ControlPlane> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mitos-kube-"));
  const procs: Array<{ name: string; proc: ChildProcess }> = [];
  const token = randomBytes(16).toString("hex");
  fs.writeFileSync(path.join(dir, "tokens.csv"), `${token},admin,admin-uid,system:masters\n`);
  execFileSync("openssl", ["genrsa", "-out", path.join(dir, "sa.key"), "2048"], { stdio: "ignore" });
  execFileSync("openssl", ["rsa", "-in", path.join(dir, "sa.key"), "-pubout", "-out", path.join(dir, "sa.pub")], {
    stdio: "ignore",
  });
  const [etcdClient, etcdPeer, apiPort] = [await freePort(), await freePort(), await freePort()];
  const spawnLogged = (name: string, cmd: string, args: string[]) => {
    const log = fs.openSync(path.join(dir, `${name}.log`), "a");
    const proc = spawn(cmd, args, { stdio: ["ignore", log, log] });
    fs.closeSync(log);
    procs.push({ name, proc });
    return proc;
  };
  spawnLogged("etcd", whichEtcd() ?? "etcd", [
    "--name=t",
    `--data-dir=${path.join(dir, "etcd")}`,
    `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
    `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
    `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
    `--initial-cluster=t=http://127.0.0.1:${etcdPeer}`,
    "--log-level=warn",
  ]);
  spawnLogged("kube-apiserver", path.join(KUBE_BIN, "kube-apiserver"), [
    `--etcd-servers=http://127.0.0.1:${etcdClient}`,
    "--bind-address=127.0.0.1",
    "--advertise-address=127.0.0.1",
    `--secure-port=${apiPort}`,
    `--cert-dir=${path.join(dir, "certs")}`,
    `--token-auth-file=${path.join(dir, "tokens.csv")}`,
    "--authorization-mode=RBAC",
    "--service-account-issuer=https://127.0.0.1",
    `--service-account-key-file=${path.join(dir, "sa.pub")}`,
    `--service-account-signing-key-file=${path.join(dir, "sa.key")}`,
    "--service-cluster-ip-range=10.0.0.0/24",
    "--enable-priority-and-fairness=false",
    "--disable-admission-plugins=ServiceAccount",
    // mitosd's DaemonSet runs privileged (QEMU, /dev/kvm), as real clusters allow.
    "--allow-privileged=true",
  ]);
  const url = `https://127.0.0.1:${apiPort}`;
  const kubeconfigPath = path.join(dir, "kubeconfig");
  fs.writeFileSync(
    kubeconfigPath,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      "- name: test",
      "  cluster:",
      `    server: ${url}`,
      "    insecure-skip-tls-verify: true",
      "users:",
      "- name: admin",
      "  user:",
      `    token: ${token}`,
      "contexts:",
      "- name: test",
      "  context: {cluster: test, user: admin}",
      "current-context: test",
      "",
    ].join("\n"),
  );
  const kubectl = (args: string[], input?: string): string => {
    try {
      return execFileSync("kubectl", [`--kubeconfig=${kubeconfigPath}`, ...args], {
        input,
        encoding: "utf8",
        stdio: ["pipe", "pipe", "pipe"],
      });
    } catch (e) {
      const err = e as { stderr?: string; stdout?: string; message: string };
      throw new Error(`kubectl ${args.join(" ")}: ${err.stderr || err.stdout || err.message}`);
    }
  };

  const stop = async () => {
    for (const { proc } of [...procs].reverse()) {
      if (proc.exitCode !== null || proc.signalCode !== null) continue;
      const gone = new Promise<void>((r) => proc.once("exit", () => r()));
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      await gone;
      clearTimeout(t);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const exited = procs.find((p) => p.proc.exitCode !== null);
      if (exited) throw new Error(`${exited.name} exited: ${tail(path.join(dir, `${exited.name}.log`))}`);
      const ok = await fetchReady(url, token);
      if (ok) break;
      if (Date.now() > deadline)
        throw new Error(`kube-apiserver not ready: ${tail(path.join(dir, "kube-apiserver.log"))}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    if (opts.installCrds !== false) {
      kubectl(["apply", "-f", path.join(repoRoot, "deploy/crds")]);
      kubectl([
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/sandboxpools.mitos.run",
        "crd/sandboxes.mitos.run",
      ]);
    }
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    url,
    token,
    kubeconfigPath,
    dir,
    kubectl,
    async startControllers(o = {}) {
      const common = [`--kubeconfig=${kubeconfigPath}`, "--leader-elect=false", "--bind-address=127.0.0.1", "--port=0"];
      spawnLogged("kube-controller-manager", path.join(KUBE_BIN, "kube-controller-manager"), [
        ...common,
        `--secure-port=${await freePort()}`,
        `--service-account-private-key-file=${path.join(dir, "sa.key")}`,
        "--use-service-account-credentials=false",
        // Only what the tests use: garbage collection (owner references) and DaemonSets.
        "--controllers=garbagecollector,daemonset,nodelifecycle",
      ]);
      if (o.scheduler) {
        spawnLogged("kube-scheduler", path.join(KUBE_BIN, "kube-scheduler"), [
          ...common,
          `--secure-port=${await freePort()}`,
        ]);
      }
    },
    stop,
  };
}

async function fetchReady(url: string, token: string): Promise<boolean> {
  // The apiserver's certificate is self-signed; this probe is loopback only.
  const status = await new Promise<number>((resolve) => {
    const req = https.get(
      `${url}/readyz`,
      { headers: { authorization: `Bearer ${token}` }, rejectUnauthorized: false },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("error", () => resolve(0));
    req.setTimeout(2000, () => req.destroy());
  });
  return status === 200;
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, "utf8").slice(-3000);
  } catch {
    return "(no log)";
  }
}

/**
 * Plays the kubelet for a Node object: creates it with `labels`, reports it
 * Ready with some capacity, and renews its kube-node-lease Lease until stopped.
 */
export async function keepNodeReady(
  cp: ControlPlane,
  name: string,
  labels: Record<string, string> = {},
): Promise<{ stop(): void }> {
  const kc = new KubeConfig();
  kc.loadFromFile(cp.kubeconfigPath);
  const core = kc.makeApiClient(CoreV1Api);
  const coord = kc.makeApiClient(CoordinationV1Api);
  await core.createNode({ body: { metadata: { name, labels } } });
  const ready = async () => {
    const now = new Date().toISOString();
    await core.patchNodeStatus(
      {
        name,
        body: {
          status: {
            capacity: { cpu: "2", memory: "24Gi", pods: "110" },
            allocatable: { cpu: "2", memory: "24Gi", pods: "110" },
            conditions: [
              {
                type: "Ready",
                status: "True",
                reason: "KubeletReady",
                message: "kept ready by the test harness",
                lastHeartbeatTime: now,
                lastTransitionTime: now,
              },
            ],
          },
        },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    const lease = {
      metadata: { name, namespace: "kube-node-lease" },
      spec: { holderIdentity: name, leaseDurationSeconds: 40, renewTime: new V1MicroTime() },
    };
    try {
      const old = await coord.readNamespacedLease({ name, namespace: "kube-node-lease" });
      await coord.replaceNamespacedLease({
        name,
        namespace: "kube-node-lease",
        body: { ...lease, metadata: { ...lease.metadata, resourceVersion: old.metadata?.resourceVersion } },
      });
    } catch {
      await coord.createNamespacedLease({ namespace: "kube-node-lease", body: lease }).catch(() => {});
    }
  };
  await ready();
  const t = setInterval(() => void ready().catch(() => {}), 10_000);
  t.unref();
  return { stop: () => clearInterval(t) };
}

/** A real mitosd as the node agent of `node` (terminating its sandboxes when stopped). */
export function startNodeAgent(
  dataDir: string,
  o: { node: string; cp: ControlPlane; namespace: string; leaseSeconds: number; gatewayTokenFile: string },
): Promise<Daemon> {
  return startMitosd(dataDir, [
    "--node",
    o.node,
    "--kubeconfig",
    o.cp.kubeconfigPath,
    "--namespace",
    o.namespace,
    "--lease-seconds",
    String(o.leaseSeconds),
    "--gateway-token-file",
    o.gatewayTokenFile,
    "--shutdown",
    "terminate",
  ]);
}
