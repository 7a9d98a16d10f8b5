#!/usr/bin/env node
// mitos-controller: places pools and sandboxes on node agents (docs/kubernetes.md).
import { Controller } from "../controller.js";
import { Kube, loadKubeConfig } from "../kube.js";
import { logger, parseFlags, startOrExit } from "./args.js";

const HELP = `mitos-controller: schedules Mitos Sandboxes and SandboxPools to node agents

  --namespace NS   namespace of the Mitos objects (default mitos-system)
  --kubeconfig F   kubeconfig (default: the in-cluster service account)

Stateless: it rebuilds everything from the API on start, so a restart changes nothing that was right.`;

const f = parseFlags("mitos-controller", HELP, { namespace: { default: "mitos-system" }, kubeconfig: {} });
const log = logger("controller");
const controller = await startOrExit("mitos-controller", async () => {
  const c = new Controller({ kube: new Kube(loadKubeConfig(f.kubeconfig), f.namespace ?? "mitos-system"), log });
  await c.start();
  return c;
});
log("mitos-controller running", { namespace: f.namespace });
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    log(`${sig}, stopping`);
    controller.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
