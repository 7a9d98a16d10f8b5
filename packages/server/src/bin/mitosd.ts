#!/usr/bin/env node
// mitosd [--config F] [--host H] [--port P] [--data-dir D] [spend caps…]; see --help (config.ts).
import fs from "node:fs";
import path from "node:path";
import { createServer } from "../app.js";
import { ConfigError, HELP, loadDaemonConfig } from "../config.js";

let config: ReturnType<typeof loadDaemonConfig>;
try {
  config = loadDaemonConfig(process.argv.slice(2));
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  console.error(`mitosd: ${err.message}`);
  process.exit(2);
}
if (config.help) {
  console.log(HELP);
  process.exit(0);
}
const cluster = config.cluster;
let gatewayToken: string | undefined;
if (cluster?.gatewayTokenFile) {
  try {
    gatewayToken = fs.readFileSync(cluster.gatewayTokenFile, "utf8").trim();
    if (gatewayToken.length < 16) throw new Error("it holds fewer than 16 characters");
  } catch (err) {
    console.error(`mitosd: cannot use --gateway-token-file ${cluster.gatewayTokenFile}: ${(err as Error).message}`);
    process.exit(2);
  }
}
const server = await createServer({
  host: "127.0.0.1",
  port: 8080,
  ...config.options,
  ...(gatewayToken ? { extraTokens: [gatewayToken] } : {}),
});
const l = server.engine.caps.limits;
if (config.options.auth === "none") {
  console.error(
    `mitosd: WARNING: auth is off (--auth none): any local process can control every sandbox on ${server.url}`,
  );
}
console.error(
  `mitosd ${server.url} (token in ${server.tokenFile})${config.configFile ? ` config ${config.configFile}` : ""}; ` +
    `caps: ${l.maxSandboxes} sandboxes, ${l.maxGuestMemoryMib} MiB guest memory, fork count ${l.maxForkCount}, lifetime ${l.maxLifetimeSeconds}s; ` +
    `admission ${l.admission}${l.admission === "cow" ? ` (keeps ${l.memoryFloorMib} MiB free)` : ""}`,
);
console.error(`mitosd: web console at ${server.url}/ui/`);
// The Kubernetes node agent talks to this mitosd through its own HTTP API (the SDK), like any client.
let agent: { stop(): Promise<void> } | undefined;
if (cluster) {
  const { Kube, loadKubeConfig, NodeAgent } = await import("@mitos/operator");
  const { SandboxServer } = await import("@mitos/sdk");
  const log = (msg: string, fields?: Record<string, unknown>) =>
    server.app.log.info({ node: cluster.node, ...fields }, msg);
  try {
    const a = new NodeAgent({
      kube: new Kube(loadKubeConfig(cluster.kubeconfig), cluster.namespace),
      node: cluster.node,
      server: new SandboxServer({ baseUrl: server.url, apiKey: server.token }),
      endpoint: cluster.advertiseUrl ?? server.url,
      leaseSeconds: cluster.leaseSeconds,
      stateFile: path.join(server.engine.dataDir, "node-agent.json"),
      log,
    });
    await a.start();
    agent = a;
    console.error(
      `mitosd: node agent for ${cluster.node} (namespace ${cluster.namespace}, lease ${cluster.leaseSeconds}s, endpoint ${cluster.advertiseUrl ?? server.url})`,
    );
  } catch (err) {
    console.error(`mitosd: the node agent for ${cluster.node} could not start: ${(err as Error).message}`);
    await server.close({ killSandboxes: false });
    process.exit(1);
  }
}
let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    const keep = config.shutdown === "keep";
    console.error(
      `mitosd: ${sig}, shutting down; ${keep ? "sandboxes keep running for the next mitosd (--shutdown keep)" : "terminating sandboxes (--shutdown terminate)"}`,
    );
    Promise.resolve(agent?.stop())
      .then(() => server.close({ killSandboxes: !keep }))
      .then(
        () => process.exit(0),
        () => process.exit(1),
      );
  });
}
