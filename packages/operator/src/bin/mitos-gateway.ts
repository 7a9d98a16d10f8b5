#!/usr/bin/env node
// mitos-gateway: mitosd's API for a whole cluster (docs/kubernetes.md).
import { Gateway } from "../gateway.js";
import { Kube, loadKubeConfig } from "../kube.js";
import { logger, parseFlags, readSecret, startOrExit } from "./args.js";

const HELP = `mitos-gateway: one URL for every sandbox of a Mitos cluster

  --host H               address to bind (default 127.0.0.1; 0.0.0.0 in a pod)
  --port P               port (default 8080)
  --namespace NS         namespace of the Mitos objects (default mitos-system)
  --kubeconfig F         kubeconfig (default: the in-cluster service account)
  --token-file F         the bearer token clients send (MITOS_API_KEY)
  --node-token-file F    the token node agents accept from the gateway (their --gateway-token-file)

Clients switch by setting MITOS_BASE_URL to the gateway's URL and MITOS_API_KEY to its token.`;

const f = parseFlags("mitos-gateway", HELP, {
  host: { default: "127.0.0.1" },
  port: { default: "8080" },
  namespace: { default: "mitos-system" },
  kubeconfig: {},
  "token-file": {},
  "node-token-file": {},
});
const port = Number(f.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`mitos-gateway: --port must be 0..65535, got ${f.port}`);
  process.exit(2);
}
const log = logger("gateway");
const tokens = [readSecret("mitos-gateway", f["token-file"], "--token-file")];
const nodeToken = readSecret("mitos-gateway", f["node-token-file"], "--node-token-file");
let gateway: Gateway | undefined;
const url = await startOrExit("mitos-gateway", async () => {
  gateway = new Gateway({
    kube: new Kube(loadKubeConfig(f.kubeconfig), f.namespace ?? "mitos-system"),
    tokens,
    nodeToken,
    host: f.host ?? "127.0.0.1",
    port,
    log,
  });
  return gateway.start();
});
console.error(`mitos-gateway ${url}`);
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    (gateway?.stop() ?? Promise.resolve()).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
