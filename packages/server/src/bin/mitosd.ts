#!/usr/bin/env node
// mitosd [--config F] [--host H] [--port P] [--data-dir D] [spend caps…]; see --help (config.ts).
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
const server = await createServer({ host: "127.0.0.1", port: 8080, ...config.options });
const l = server.engine.caps.limits;
if (config.options.auth === "none") {
  console.error(
    `mitosd: WARNING: auth is off (--auth none): any local process can control every sandbox on ${server.url}`,
  );
}
console.error(
  `mitosd ${server.url} (token in ${server.tokenFile})${config.configFile ? ` config ${config.configFile}` : ""}; ` +
    `caps: ${l.maxSandboxes} sandboxes, ${l.maxGuestMemoryMib} MiB guest memory, fork count ${l.maxForkCount}, lifetime ${l.maxLifetimeSeconds}s`,
);
let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    const keep = config.shutdown === "keep";
    console.error(
      `mitosd: ${sig}, shutting down; ${keep ? "sandboxes keep running for the next mitosd (--shutdown keep)" : "terminating sandboxes (--shutdown terminate)"}`,
    );
    server.close({ killSandboxes: !keep }).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
