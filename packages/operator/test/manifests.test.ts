// The deploy/ manifests against a real kube-apiserver v1.20 (Mitos targets
// 1.20+): the kustomize build renders, every object passes a server-side dry
// run (schema, admission, defaulting), each file does on its own too, the
// Roles grant what each component needs and no more, and the CRD schemas
// reject bad specs with 422 and fill in defaults.
// Skipped without the control-plane binaries (scripts/build-kube.sh), except
// under CI=true, where their absence is a failure.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import path from "node:path";
import { after, before, test } from "node:test";
import {
  type ControlPlane,
  KUBE_BIN,
  keepNodeReady,
  kubeAvailable,
  startControlPlane,
} from "../../../test-support/kube.js";
import { repoRoot } from "../../../test-support/mitosd.js";

const deployDir = path.join(repoRoot, "deploy");
const available = kubeAvailable();
const skip =
  !available && process.env.CI !== "true"
    ? `no kube-apiserver in ${KUBE_BIN} or no etcd: build them with scripts/build-kube.sh`
    : false;

let cp: ControlPlane | undefined;
const kube = (): ControlPlane => {
  assert.ok(cp, "control plane not started");
  return cp;
};

before(async () => {
  if (skip) return;
  assert.ok(
    available,
    `CI=true but the control plane is missing (${KUBE_BIN}/kube-apiserver, etcd): run scripts/build-kube.sh`,
  );
  cp = await startControlPlane(); // installs deploy/crds and waits for Established
  // Namespaced dry runs need the namespace for real (NamespaceLifecycle admission).
  cp.kubectl(["apply", "-f", path.join(deployDir, "namespace.yaml")]);
  for (const name of ["mitos-api-token", "mitos-gateway-token"]) {
    cp.kubectl([
      "-n",
      "mitos-system",
      "create",
      "secret",
      "generic",
      name,
      `--from-literal=token=${randomBytes(24).toString("hex")}`,
    ]);
  }
});

after(async () => {
  await cp?.stop();
});

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: free-form Kubernetes object bodies
  [key: string]: any;
}

const EXPECTED = [
  "Namespace//mitos-system",
  "CustomResourceDefinition//sandboxes.mitos.run",
  "CustomResourceDefinition//sandboxpools.mitos.run",
  "ServiceAccount/mitos-system/mitos-node",
  "ServiceAccount/mitos-system/mitos-controller",
  "ServiceAccount/mitos-system/mitos-gateway",
  "Role/mitos-system/mitos-node",
  "Role/mitos-system/mitos-controller",
  "Role/mitos-system/mitos-gateway",
  "RoleBinding/mitos-system/mitos-node",
  "RoleBinding/mitos-system/mitos-controller",
  "RoleBinding/mitos-system/mitos-gateway",
  "ClusterRole//mitos-node-labels",
  "ClusterRoleBinding//mitos-node-labels",
  "Service/mitos-system/mitos-gateway",
  "Deployment/mitos-system/mitos-controller",
  "Deployment/mitos-system/mitos-gateway",
  "DaemonSet/mitos-system/mitosd",
].sort();

const key = (o: KubeObject) => `${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`;

/** `kubectl apply --dry-run=server -o json` of YAML text: the objects as the API server would store them. */
function serverDryRun(yaml: string): KubeObject[] {
  const out = kube().kubectl(["apply", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-"], yaml);
  const parsed = JSON.parse(out) as KubeObject;
  return parsed.kind === "List" ? (parsed.items as KubeObject[]) : [parsed];
}

test("kustomize renders deploy/ and the API server accepts every object", { skip }, () => {
  const rendered = kube().kubectl(["kustomize", deployDir]);
  const kinds = rendered.match(/^kind: \S+$/gm) ?? [];
  assert.equal(kinds.length, EXPECTED.length, rendered);

  const accepted = serverDryRun(rendered);
  assert.deepEqual(accepted.map(key).sort(), EXPECTED);
  for (const o of accepted) {
    assert.equal(o.metadata.labels?.["app.kubernetes.io/part-of"], "mitos", `${key(o)} lacks the part-of label`);
  }

  // The server really processed them: its defaults are filled in.
  const ds = accepted.find((o) => o.kind === "DaemonSet");
  assert.ok(ds);
  const pod = ds.spec?.template.spec;
  assert.equal(pod.dnsPolicy, "ClusterFirst");
  assert.equal(pod.serviceAccountName, "mitos-node");
  assert.deepEqual(pod.nodeSelector, { "mitos.run/sandbox-host": "true" });
  assert.equal(pod.terminationGracePeriodSeconds, 60);
  assert.deepEqual(ds.spec?.updateStrategy, { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 1 } });
  const agent = pod.containers[0];
  assert.equal(agent.securityContext.privileged, true);
  assert.ok(agent.args.includes("$(NODE_NAME)") && agent.args.includes("http://$(POD_IP):8080"), agent.args.join(" "));
  const hostPaths = Object.fromEntries(
    (pod.volumes as Array<{ hostPath?: { path: string; type: string } }>)
      .filter((v) => v.hostPath)
      .map((v) => [v.hostPath?.path, v.hostPath?.type]),
  );
  assert.deepEqual(hostPaths, {
    "/dev/kvm": "CharDevice",
    "/dev/shm": "Directory",
    "/var/lib/mitos": "DirectoryOrCreate",
  });

  for (const name of ["mitos-controller", "mitos-gateway"]) {
    const d = accepted.find((o) => o.kind === "Deployment" && o.metadata.name === name);
    assert.ok(d, name);
    const spec = d.spec?.template.spec;
    assert.equal(spec.serviceAccountName, name);
    assert.equal(spec.securityContext.runAsNonRoot, true);
    for (const c of spec.containers) {
      assert.equal(c.securityContext.readOnlyRootFilesystem, true, name);
      assert.equal(c.securityContext.allowPrivilegeEscalation, false, name);
      assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"], name);
    }
  }
  const svc = accepted.find((o) => o.kind === "Service");
  assert.equal(svc?.spec?.type, "ClusterIP");
  assert.deepEqual(
    (svc?.spec?.ports as Array<{ port: number; targetPort: unknown }>).map((p) => [p.port, p.targetPort]),
    [[80, "http"]],
  );
});

test("each manifest file passes a server-side dry run on its own", { skip }, () => {
  const files: Record<string, string[]> = {
    "namespace.yaml": ["Namespace//mitos-system"],
    "rbac.yaml": EXPECTED.filter((k) => /^(ServiceAccount|Role|RoleBinding|ClusterRole|ClusterRoleBinding)\//.test(k)),
    "node-daemonset.yaml": ["DaemonSet/mitos-system/mitosd"],
    "controller.yaml": ["Deployment/mitos-system/mitos-controller"],
    "gateway.yaml": ["Deployment/mitos-system/mitos-gateway", "Service/mitos-system/mitos-gateway"],
  };
  for (const [file, want] of Object.entries(files)) {
    const accepted = serverDryRun(fs.readFileSync(path.join(deployDir, file), "utf8"));
    assert.deepEqual(accepted.map(key).sort(), [...want].sort(), file);
  }
});

test("the Roles grant each component what it needs and no more", { skip }, async () => {
  kube().kubectl(["apply", "-f", path.join(deployDir, "rbac.yaml")]);
  /** Asks the authorizer (SubjectAccessReview) about `verb resource[.group][/subresource]` for a component's SA. */
  const can = async (sa: string, verb: string, resource: string, namespace = "mitos-system"): Promise<boolean> => {
    const m = /^([a-z]+)(?:\.([a-z0-9.]+))?(?:\/([a-z]+))?$/.exec(resource);
    assert.ok(m, resource);
    const res = await api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
      apiVersion: "authorization.k8s.io/v1",
      kind: "SubjectAccessReview",
      spec: {
        user: `system:serviceaccount:mitos-system:${sa}`,
        groups: ["system:serviceaccounts", "system:serviceaccounts:mitos-system", "system:authenticated"],
        resourceAttributes: { namespace, verb, group: m[2] ?? "", resource: m[1], subresource: m[3] ?? "" },
      },
    });
    assert.equal(res.status, 201, JSON.stringify(res.json));
    return res.json.status.allowed === true;
  };
  const grants: Record<string, Array<[string, string]>> = {
    "mitos-node": [
      ["watch", "sandboxes.mitos.run"],
      ["patch", "sandboxes.mitos.run/status"],
      ["list", "sandboxpools.mitos.run"],
      ["create", "leases.coordination.k8s.io"],
      ["update", "leases.coordination.k8s.io"],
    ],
    "mitos-controller": [
      ["update", "sandboxes.mitos.run"],
      ["delete", "sandboxes.mitos.run"],
      ["update", "sandboxes.mitos.run/status"],
      ["patch", "sandboxpools.mitos.run/status"],
      ["watch", "leases.coordination.k8s.io"],
      ["create", "events"],
    ],
    "mitos-gateway": [
      ["create", "sandboxes.mitos.run"],
      ["delete", "sandboxes.mitos.run"],
      ["watch", "sandboxpools.mitos.run"],
      ["get", "leases.coordination.k8s.io"],
    ],
  };
  const denials: Record<string, Array<[string, string]>> = {
    "mitos-node": [
      ["create", "sandboxes.mitos.run"],
      ["delete", "sandboxes.mitos.run"],
      ["update", "sandboxpools.mitos.run/status"],
      ["delete", "leases.coordination.k8s.io"],
      ["get", "secrets"],
    ],
    "mitos-controller": [
      ["create", "sandboxes.mitos.run"],
      ["update", "sandboxpools.mitos.run"],
      ["update", "leases.coordination.k8s.io"],
      ["list", "secrets"],
    ],
    "mitos-gateway": [
      ["update", "sandboxes.mitos.run"],
      ["patch", "sandboxes.mitos.run/status"],
      ["create", "sandboxpools.mitos.run"],
      ["create", "leases.coordination.k8s.io"],
      ["get", "secrets"],
      ["list", "pods"],
    ],
  };
  for (const [sa, rules] of Object.entries(grants)) {
    for (const [verb, resource] of rules) assert.ok(await can(sa, verb, resource), `${sa} cannot ${verb} ${resource}`);
  }
  for (const [sa, rules] of Object.entries(denials)) {
    for (const [verb, resource] of rules) assert.ok(!(await can(sa, verb, resource)), `${sa} can ${verb} ${resource}`);
  }
  // Nothing outside the namespace; cluster-wide only the node agent's read of Nodes (its labels).
  for (const sa of Object.keys(grants)) {
    assert.ok(!(await can(sa, "list", "sandboxes.mitos.run", "default")), sa);
    assert.ok(!(await can(sa, "list", "sandboxes.mitos.run", "")), sa);
    assert.equal(await can(sa, "get", "nodes", ""), sa === "mitos-node", sa);
    assert.ok(!(await can(sa, "list", "nodes", "")), sa);
    assert.ok(!(await can(sa, "update", "nodes", "")), sa);
  }
});

/** A raw call to the API server, so the status code is exactly what it answered. */
function api(method: string, route: string, body?: unknown): Promise<{ status: number; json: KubeObject }> {
  const { url, token } = kube();
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${url}${route}`,
      {
        method,
        // The test apiserver's certificate is self-signed; loopback only.
        rejectUnauthorized: false,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json" },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          try {
            resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as KubeObject });
          } catch {
            reject(new Error(`${method} ${route}: ${res.statusCode} ${text}`));
          }
        });
      },
    );
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

const POOLS = "/apis/mitos.run/v1/namespaces/default/sandboxpools";
const SANDBOXES = "/apis/mitos.run/v1/namespaces/default/sandboxes";
let seq = 0;
const pool = (spec: unknown) => ({
  apiVersion: "mitos.run/v1",
  kind: "SandboxPool",
  metadata: { name: `pool-${++seq}` },
  spec,
});
const sandbox = (spec: unknown) => ({
  apiVersion: "mitos.run/v1",
  kind: "Sandbox",
  metadata: { name: `sb-${++seq}` },
  spec,
});

test("the CRD schemas reject bad specs with 422", { skip }, async () => {
  const bad: Array<[string, string, unknown, string[]]> = [
    [POOLS, "min below 0", pool({ template: {}, min: -1 }), ["spec.min"]],
    [POOLS, "unknown scope", pool({ template: {}, scope: "Everywhere" }), ["spec.scope", "Everywhere"]],
    [POOLS, "too little memory", pool({ template: { resources: { memSizeMiB: 1 } } }), ["memSizeMiB"]],
    [POOLS, "too many vCPUs", pool({ template: { resources: { vcpuCount: 33 } } }), ["vcpuCount"]],
    [POOLS, "unknown egress", pool({ template: { network: { egress: "some" } } }), ["egress"]],
    [POOLS, "min as a string", pool({ template: {}, min: "3" }), ["spec.min"]],
    [POOLS, "no template", pool({ min: 1 }), ["spec.template"]],
    [POOLS, "no spec", { ...pool(undefined), spec: undefined }, ["spec"]],
    [
      SANDBOXES,
      "fork count 0, no source",
      sandbox({ forkOf: { count: 0 } }),
      ["spec.forkOf.count", "spec.forkOf.sandbox"],
    ],
    [SANDBOXES, "fork count above 256", sandbox({ forkOf: { sandbox: "x", count: 257 } }), ["spec.forkOf.count"]],
    [SANDBOXES, "timeout 0", sandbox({ pool: "p", timeoutSeconds: 0 }), ["spec.timeoutSeconds"]],
    [SANDBOXES, "empty pool name", sandbox({ pool: "" }), ["spec.pool"]],
  ];
  for (const [route, what, body, fields] of bad) {
    const res = await api("POST", route, body);
    assert.equal(res.status, 422, `${what}: ${JSON.stringify(res.json)}`);
    assert.equal(res.json.reason, "Invalid", what);
    for (const f of fields) assert.ok(String(res.json.message).includes(f), `${what}: ${res.json.message}`);
  }
  // The same through kubectl, as an installer would see it.
  assert.throws(
    () => kube().kubectl(["create", "-f", "-"], JSON.stringify(pool({ template: {}, min: -1 }))),
    /is invalid[\s\S]*spec\.min/,
  );
  // Nothing was stored.
  for (const route of [POOLS, SANDBOXES]) {
    const list = await api("GET", route);
    assert.equal(list.status, 200);
    assert.deepEqual(list.json.items, [], route);
  }
});

test("the CRD schemas fill in defaults and prune unknown fields", { skip }, async () => {
  const minimal = pool({ template: {} });
  assert.equal((await api("POST", POOLS, minimal)).status, 201);
  const got = await api("GET", `${POOLS}/${minimal.metadata.name}`);
  assert.equal(got.status, 200);
  assert.equal(got.json.spec?.min, 0);
  assert.equal(got.json.spec?.scope, "PerNode");
  assert.deepEqual(got.json.spec?.template, { image: "base" }); // resources/network have no default themselves
  assert.equal(got.json.spec?.max, undefined);

  const sized = pool({ template: { resources: {}, network: {} }, bogus: true });
  assert.equal((await api("POST", POOLS, sized)).status, 201);
  const got2 = await api("GET", `${POOLS}/${sized.metadata.name}`);
  assert.deepEqual(got2.json.spec?.template, {
    image: "base",
    resources: { vcpuCount: 1, memSizeMiB: 256 }, // diskSizeMiB has no default
    network: { egress: "deny" },
  });
  assert.equal(got2.json.spec?.bogus, undefined, "unknown fields are pruned");

  const fork = sandbox({ forkOf: { sandbox: "x" } });
  assert.equal((await api("POST", SANDBOXES, fork)).status, 201);
  const got3 = await api("GET", `${SANDBOXES}/${fork.metadata.name}`);
  assert.deepEqual(got3.json.spec, { forkOf: { sandbox: "x", count: 1 } });
});

test(
  "the DaemonSet puts one mitosd on each labelled node and none elsewhere (kube-scheduler binds them)",
  {
    skip,
  },
  async () => {
    const c = kube();
    await c.startControllers({ scheduler: true });
    const nodes = [
      await keepNodeReady(c, "kvm-1", { "mitos.run/sandbox-host": "true" }),
      await keepNodeReady(c, "kvm-2", { "mitos.run/sandbox-host": "true" }),
      await keepNodeReady(c, "plain-1"),
    ];
    try {
      c.kubectl(["apply", "-k", deployDir]);
      const deadline = Date.now() + 90_000;
      let bound: Record<string, string> = {};
      for (;;) {
        const pods = JSON.parse(
          c.kubectl(["-n", "mitos-system", "get", "pods", "-l", "app.kubernetes.io/name=mitosd", "-o", "json"]),
        ) as { items: Array<{ metadata: { name: string }; spec: { nodeName?: string } }> };
        bound = Object.fromEntries(pods.items.map((p) => [p.metadata.name, p.spec.nodeName ?? ""]));
        const onNodes = Object.values(bound).sort();
        if (onNodes.length === 2 && onNodes.every((n) => n !== "")) break;
        if (Date.now() > deadline) assert.fail(`DaemonSet pods not bound in time: ${JSON.stringify(bound)}`);
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.deepEqual(Object.values(bound).sort(), ["kvm-1", "kvm-2"]);
    } finally {
      for (const n of nodes) n.stop();
    }
  },
);
