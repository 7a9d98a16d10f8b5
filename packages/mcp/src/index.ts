export { createMcpServer } from "./server.js";
export { registerTools } from "./tools.js";
