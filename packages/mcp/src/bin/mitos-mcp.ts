#!/usr/bin/env node
// mitos-mcp: MCP server over stdio. Talks to mitosd at MITOS_BASE_URL with
// MITOS_API_KEY (or the token file). Client config:
//   {"mcpServers": {"mitos": {"command": "mitos-mcp"}}}
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { createMcpServer } from "../server.js";

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  console.log(`mitos-mcp: MCP server (stdio) for Mitos sandboxes.

Tools: sandbox_create, sandbox_exec, sandbox_fork, sandbox_read_file,
sandbox_write_file, sandbox_list, sandbox_terminate.

Environment: MITOS_BASE_URL (default http://127.0.0.1:8080), MITOS_API_KEY
(default: the token file in MITOS_DATA_DIR, /var/lib/mitos/token).
Client config: {"mcpServers": {"mitos": {"command": "mitos-mcp"}}}`);
  process.exit(0);
}
const server = createMcpServer();
await server.connect(new StdioServerTransport());
