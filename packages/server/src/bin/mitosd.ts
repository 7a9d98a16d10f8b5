#!/usr/bin/env node
// mitosd [--host H] [--port P] [--data-dir D]; env MITOS_HOST, MITOS_PORT, MITOS_DATA_DIR.
import { parseArgs } from "node:util";
import { createServer } from "../app.js";

const { values } = parseArgs({
  options: {
    host: { type: "string" },
    port: { type: "string" },
    "data-dir": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(`mitosd: the Mitos daemon (HTTP lifecycle API + Connect runtime)

  --host H       address to bind (default 127.0.0.1; env MITOS_HOST)
  --port P       port (default 8080; env MITOS_PORT)
  --data-dir D   data dir: images, templates, journal, token (default /var/lib/mitos; env MITOS_DATA_DIR)

The API token is created on first start in <data-dir>/token (mode 0600).`);
  process.exit(0);
}
const port = Number(values.port ?? process.env.MITOS_PORT ?? 8080);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`mitosd: --port must be 0..65535, got ${values.port}`);
  process.exit(2);
}
const dataDir = values["data-dir"] ?? process.env.MITOS_DATA_DIR;
const server = await createServer({
  host: values.host ?? process.env.MITOS_HOST ?? "127.0.0.1",
  port,
  ...(dataDir ? { dataDir } : {}),
});
console.error(`mitosd ${server.url} (token in ${server.tokenFile})`);
let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    console.error(`mitosd: ${sig}, shutting down`);
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
