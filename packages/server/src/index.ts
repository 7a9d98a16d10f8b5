export type { MitosServer, ServerOptions } from "./app.js";
export { createServer, VERSION } from "./app.js";
