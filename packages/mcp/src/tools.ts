// The MCP tools: what an agent can do with Mitos sandboxes, described so an
// LLM can pick the right one. Built only on @mitos/sdk.

import { MitosError, type Sandbox, type SandboxServer } from "@mitos/sdk";
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";

const sandboxId = z.string().describe("Sandbox id, as returned by sandbox_create or sandbox_fork (e.g. sb-1a2b3c4d).");

/** Tool results are JSON text; errors come back as results with isError and the API's error envelope. */
async function run(fn: () => Promise<unknown>): Promise<CallToolResult> {
  try {
    const value = await fn();
    return { content: [{ type: "text", text: JSON.stringify(value, null, 2) }] };
  } catch (err) {
    const e =
      err instanceof MitosError
        ? {
            code: err.code,
            message: err.message,
            cause: err.cause ?? null,
            remediation: err.remediation,
            context: err.context,
          }
        : {
            code: "internal",
            message: String(err),
            cause: null,
            remediation: "Retry; if it persists, check mitosd's log.",
            context: {},
          };
    return { isError: true, content: [{ type: "text", text: JSON.stringify({ error: e }, null, 2) }] };
  }
}

function summary(s: Sandbox) {
  return { id: s.id, template: s.templateId, parent: s.parentId, state: s.state, deadline_unix: s.deadlineUnix };
}

export function registerTools(mcp: McpServer, server: SandboxServer): void {
  const get = (id: string) => server.get(id);

  mcp.registerTool(
    "sandbox_create",
    {
      title: "Create a sandbox",
      description:
        "Create a new isolated Linux sandbox (its own microVM) from a template and return its id. " +
        'Template "python" has Python 3; "base" is minimal Debian. The sandbox lives until terminated or its timeout.',
      inputSchema: {
        template: z.string().default("python").describe('Template to start from, e.g. "python".'),
        timeout_seconds: z.number().int().positive().optional().describe("Lifetime in seconds (default 300)."),
      },
    },
    ({ template, timeout_seconds }) =>
      run(async () =>
        summary(
          await server.fork(template, timeout_seconds === undefined ? undefined : { timeoutSeconds: timeout_seconds }),
        ),
      ),
  );

  mcp.registerTool(
    "sandbox_exec",
    {
      title: "Run a command",
      description:
        "Run a shell command (via /bin/sh -c) in a sandbox and return stdout, stderr and the exit code. " +
        "A command still running at timeout_seconds is killed and exits 124.",
      inputSchema: {
        sandbox_id: sandboxId,
        command: z.string().describe("Shell command, e.g. \"python3 -c 'print(6*7)'\"."),
        timeout_seconds: z.number().int().positive().optional().describe("Kill the command after this many seconds."),
      },
    },
    ({ sandbox_id, command, timeout_seconds }) =>
      run(async () => {
        const sb = await get(sandbox_id);
        const r = await sb.exec(command, timeout_seconds === undefined ? {} : { timeoutSeconds: timeout_seconds });
        return { exit_code: r.exitCode, stdout: r.stdout, stderr: r.stderr, exec_time_ms: r.execTimeMs };
      }),
  );

  mcp.registerTool(
    "sandbox_fork",
    {
      title: "Fork a running sandbox",
      description:
        "Live-fork a running sandbox into `count` children. Each child is its own VM that resumes from the parent's " +
        "exact state (files, memory, running processes); changes in one never affect the others. Use it to try " +
        "several approaches from the same point (best-of-N). Returns the child ids.",
      inputSchema: {
        sandbox_id: sandboxId,
        count: z.number().int().min(1).max(64).default(1).describe("How many children (1-64)."),
      },
    },
    ({ sandbox_id, count }) =>
      run(async () => {
        const children = await (await get(sandbox_id)).fork(count);
        return { parent: sandbox_id, children: children.map((c) => c.id) };
      }),
  );

  mcp.registerTool(
    "sandbox_read_file",
    {
      title: "Read a file",
      description: "Read a text file from a sandbox (absolute path) and return its contents.",
      inputSchema: { sandbox_id: sandboxId, path: z.string().describe("Absolute path, e.g. /root/out.txt.") },
    },
    ({ sandbox_id, path }) => run(async () => ({ path, content: await (await get(sandbox_id)).files.readText(path) })),
  );

  mcp.registerTool(
    "sandbox_write_file",
    {
      title: "Write a file",
      description: "Create or replace a text file in a sandbox (absolute path). Parent directories must exist.",
      inputSchema: {
        sandbox_id: sandboxId,
        path: z.string().describe("Absolute path, e.g. /root/main.py."),
        content: z.string().describe("The file's new contents."),
      },
    },
    ({ sandbox_id, path, content }) =>
      run(async () => {
        await (await get(sandbox_id)).files.write(path, content);
        return { path, bytes_written: Buffer.byteLength(content) };
      }),
  );

  mcp.registerTool(
    "sandbox_list",
    {
      title: "List sandboxes",
      description: "List the live sandboxes with their template, parent and state.",
      inputSchema: {},
    },
    () => run(async () => (await server.listSandboxes()).map(summary)),
  );

  mcp.registerTool(
    "sandbox_terminate",
    {
      title: "Terminate a sandbox",
      description: "Stop a sandbox and free its resources. Its children are not affected.",
      inputSchema: { sandbox_id: sandboxId },
    },
    ({ sandbox_id }) =>
      run(async () => {
        await (await get(sandbox_id)).terminate();
        return { id: sandbox_id, status: "terminated" };
      }),
  );
}
