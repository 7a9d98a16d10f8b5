// The MCP server object: name, version, and the sandbox tools.

import { type ClientOptions, SandboxServer } from "@mitos/sdk";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { registerTools } from "./tools.js";

export const VERSION = "0.1.0";

export function createMcpServer(options: ClientOptions = {}): McpServer {
  const mcp = new McpServer({ name: "mitos", version: VERSION });
  registerTools(mcp, new SandboxServer(options));
  return mcp;
}
