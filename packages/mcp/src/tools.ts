// The MCP tools: what an agent can do with Mitos sandboxes, described so an
// LLM can pick the right one. Built only on @mitos/sdk. Each tool also takes
// the public Mitos project's argument names (pool, sandbox, replicas; see
// args.ts) and answers in its result shapes where it defines one.

import { MitosError, type Result, type Sandbox, type SandboxServer } from "@mitos/sdk";
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import { either, rejectUnknown } from "./args.js";

/** The JSON of an isError result: upstream's {code, cause?, remediation}, plus message and context. */
export interface ToolError {
  code: string;
  message: string;
  /** The underlying reason; absent, never null. */
  cause?: string;
  remediation: string;
  context?: Record<string, unknown>;
}

export function toolError(err: unknown): ToolError {
  if (!(err instanceof MitosError)) {
    return {
      code: "internal",
      message: err instanceof Error ? err.message : String(err),
      remediation: "Retry; if it persists, check mitosd's log.",
    };
  }
  const e: ToolError = { code: err.code, message: err.message, remediation: err.remediation };
  // typeof, not !== undefined: an envelope from an older mitosd can carry "cause": null.
  if (typeof err.cause === "string") e.cause = err.cause;
  if (Object.keys(err.context).length > 0) e.context = err.context;
  return e;
}

/** Tool results are JSON text; errors come back as results with isError and a ToolError. */
async function run(fn: () => Promise<unknown>): Promise<CallToolResult> {
  try {
    const value = await fn();
    return { content: [{ type: "text", text: JSON.stringify(value, null, 2) }] };
  } catch (err) {
    return { isError: true, content: [{ type: "text", text: JSON.stringify(toolError(err), null, 2) }] };
  }
}

/** Plots and other images of a cell, as MCP image content. */
function imagesOf(results: Result[]): CallToolResult["content"] {
  const out: CallToolResult["content"] = [];
  for (const r of results) {
    if (r.png !== undefined) out.push({ type: "image", data: r.png, mimeType: "image/png" });
    else if (r.jpeg !== undefined) out.push({ type: "image", data: r.jpeg, mimeType: "image/jpeg" });
    else if (r.svg !== undefined) {
      out.push({ type: "image", data: Buffer.from(r.svg).toString("base64"), mimeType: "image/svg+xml" });
    }
  }
  return out;
}

function summary(s: Sandbox) {
  return {
    id: s.id,
    template: s.templateId,
    parent: s.parentId,
    state: s.state,
    deadline_unix: s.deadlineUnix,
    ...(s.network ? { network: s.network } : {}),
  };
}

const idText = "Sandbox id, as returned by sandbox_create or sandbox_fork (e.g. sb-1a2b3c4d).";
const sandboxIds = {
  sandbox_id: z.string().optional().describe(`${idText} Required unless \`sandbox\` is given.`),
  sandbox: z
    .string()
    .optional()
    .describe("The upstream Mitos name for `sandbox_id`; give either one (both only if equal)."),
};
const timeoutSeconds = z.number().int().positive().optional();

/**
 * The input schema of a tool: the listed arguments and no others. A loose
 * object, so unknown keys reach rejectUnknown (a plain z.object would strip
 * them silently); advertised with additionalProperties false.
 */
function input<S extends z.ZodRawShape>(shape: S) {
  return z.looseObject(shape).meta({ additionalProperties: false });
}

export function registerTools(mcp: McpServer, server: SandboxServer): void {
  const sandboxOf = (tool: string, a: { sandbox_id?: string | undefined; sandbox?: string | undefined }) =>
    server.get(either(tool, ["sandbox_id", a.sandbox_id], ["sandbox", a.sandbox], true));
  /** run(), after refusing arguments the tool does not declare. */
  const checked = (tool: string, args: object, schema: z.ZodObject, fn: () => Promise<unknown>) =>
    run(async () => {
      rejectUnknown(tool, args, Object.keys(schema.shape));
      return fn();
    });

  const createInput = input({
    template: z
      .string()
      .optional()
      .describe('Template to start from: "python" or "base". Required unless `pool` is given.'),
    pool: z
      .string()
      .optional()
      .describe("The upstream Mitos name for `template`; give either one (both only if equal)."),
    timeout_seconds: timeoutSeconds.describe("Lifetime in seconds (default 300)."),
    network: z
      .object({
        egress: z.enum(["deny", "allow"]).describe('"deny": only allow_out passes; "allow": all public but deny_out.'),
        allow_out: z
          .array(z.string())
          .optional()
          .describe('Rules: CIDR, address, name or "*.suffix", optional ":port".'),
        deny_out: z.array(z.string()).optional().describe("Rules that win over allow_out."),
      })
      .optional()
      .describe("Network policy; the template must have been built with network (docs/network.md)."),
  });
  mcp.registerTool(
    "sandbox_create",
    {
      title: "Create a sandbox",
      description:
        "Create a new isolated Linux sandbox (its own microVM) from a template and return its id. " +
        'Template "python" has Python 3; "base" is minimal Debian. The sandbox lives until terminated or its timeout.',
      inputSchema: createInput,
    },
    (a) =>
      checked("sandbox_create", a, createInput, async () => {
        const template = either("sandbox_create", ["template", a.template], ["pool", a.pool], true);
        const network = a.network && {
          egress: a.network.egress,
          ...(a.network.allow_out ? { allowOut: a.network.allow_out } : {}),
          ...(a.network.deny_out ? { denyOut: a.network.deny_out } : {}),
        };
        return summary(
          await server.fork(template, {
            ...(a.timeout_seconds === undefined ? {} : { timeoutSeconds: a.timeout_seconds }),
            ...(network ? { network } : {}),
          }),
        );
      }),
  );

  const execInput = input({
    ...sandboxIds,
    command: z.string().describe("Shell command, e.g. \"python3 -c 'print(6*7)'\"."),
    timeout_seconds: timeoutSeconds.describe("Kill the command after this many seconds."),
  });
  mcp.registerTool(
    "sandbox_exec",
    {
      title: "Run a command",
      description:
        "Run a shell command (via /bin/sh -c) in a sandbox. Returns JSON {exit_code, stdout, stderr}. " +
        "A command still running at timeout_seconds is killed and exits 124.",
      inputSchema: execInput,
    },
    (a) =>
      checked("sandbox_exec", a, execInput, async () => {
        const sb = await sandboxOf("sandbox_exec", a);
        const r = await sb.exec(
          a.command,
          a.timeout_seconds === undefined ? {} : { timeoutSeconds: a.timeout_seconds },
        );
        // Exactly upstream's keys.
        return { exit_code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
      }),
  );

  const runCodeInput = input({
    ...sandboxIds,
    code: z
      .string()
      .describe(
        "Python source of one cell, e.g. \"import pandas as pd\\ndf = pd.read_csv('/workspace/d.csv')\\ndf.describe()\".",
      ),
    context: z.string().optional().describe("Context (kernel) id; default: the sandbox's default context."),
    timeout_seconds: timeoutSeconds.describe("Interrupt the cell after this many seconds; its variables stay."),
  });
  mcp.registerTool(
    "run_code",
    {
      title: "Run Python in a live kernel",
      description:
        "Run Python in the sandbox's Jupyter kernel (python template). Variables, imports and loaded data persist " +
        "between calls, and forks of the sandbox inherit them. The last expression's value is the result. Returns " +
        "JSON {exit_code, text, stdout, stderr, results, error} and any plots as images. exit_code: 0 ok, 1 raised, " +
        "124 interrupted at timeout_seconds.",
      inputSchema: runCodeInput,
    },
    async (a) => {
      const value: { result?: CallToolResult } = {};
      const text = await checked("run_code", a, runCodeInput, async () => {
        const sb = await sandboxOf("run_code", a);
        const r = await sb.runCode(a.code, {
          ...(a.context ? { context: a.context } : {}),
          ...(a.timeout_seconds === undefined ? {} : { timeoutSeconds: a.timeout_seconds }),
        });
        value.result = { content: imagesOf(r.results) };
        return {
          exit_code: r.exitCode,
          text: r.text ?? null,
          stdout: r.logs.stdout.join(""),
          stderr: r.logs.stderr.join(""),
          results: r.results.map((x) => ({
            is_main_result: x.isMainResult,
            formats: Object.keys(x.data),
            ...(x.text !== undefined ? { text: x.text } : {}),
            ...(x.html !== undefined && x.html.length <= 20_000 ? { html: x.html } : {}),
          })),
          error: r.error ?? null,
        };
      });
      return { ...text, content: [...text.content, ...(value.result?.content ?? [])] };
    },
  );

  const forkInput = input({
    ...sandboxIds,
    count: z.number().int().min(1).max(64).optional().describe("How many children (1-64, default 1)."),
    replicas: z
      .number()
      .int()
      .min(1)
      .max(64)
      .optional()
      .describe("The upstream Mitos name for `count`; give either one (both only if equal)."),
  });
  mcp.registerTool(
    "sandbox_fork",
    {
      title: "Fork a running sandbox",
      description:
        "Live-fork a running sandbox into `count` children. Each child is its own VM that resumes from the parent's " +
        "exact state (files, memory, running processes); changes in one never affect the others. Use it to try " +
        "several approaches from the same point (best-of-N). Returns the child ids: JSON {parent, children} when " +
        "called with `sandbox_id`, a JSON array of ids (upstream's shape) when called with `sandbox`.",
      inputSchema: forkInput,
    },
    (a) =>
      checked("sandbox_fork", a, forkInput, async () => {
        const count = either("sandbox_fork", ["count", a.count], ["replicas", a.replicas]) ?? 1;
        const parent = await sandboxOf("sandbox_fork", a);
        const children = (await parent.fork(count)).map((c) => c.id);
        return a.sandbox === undefined ? { parent: parent.id, children } : children;
      }),
  );

  const readInput = input({ ...sandboxIds, path: z.string().describe("Absolute path, e.g. /root/out.txt.") });
  mcp.registerTool(
    "sandbox_read_file",
    {
      title: "Read a file",
      description: "Read a text file from a sandbox (absolute path). Returns JSON {path, content}.",
      inputSchema: readInput,
    },
    (a) =>
      checked("sandbox_read_file", a, readInput, async () => {
        const sb = await sandboxOf("sandbox_read_file", a);
        return { path: a.path, content: await sb.files.readText(a.path) };
      }),
  );

  const writeInput = input({
    ...sandboxIds,
    path: z.string().describe("Absolute path, e.g. /root/main.py."),
    content: z.string().describe("The file's new contents."),
  });
  mcp.registerTool(
    "sandbox_write_file",
    {
      title: "Write a file",
      description: "Create or replace a text file in a sandbox (absolute path). Returns JSON {path, bytes_written}.",
      inputSchema: writeInput,
    },
    (a) =>
      checked("sandbox_write_file", a, writeInput, async () => {
        const sb = await sandboxOf("sandbox_write_file", a);
        await sb.files.write(a.path, a.content);
        return { path: a.path, bytes_written: Buffer.byteLength(a.content) };
      }),
  );

  const listInput = input({});
  mcp.registerTool(
    "sandbox_list",
    {
      title: "List sandboxes",
      description: "List the live sandboxes with their template, parent and state.",
      inputSchema: listInput,
    },
    (a) => checked("sandbox_list", a, listInput, async () => (await server.listSandboxes()).map(summary)),
  );

  const checkpointInput = input({
    ...sandboxIds,
    name: z.string().max(128).optional().describe("A label for the checkpoint, e.g. after-setup."),
  });
  mcp.registerTool(
    "sandbox_checkpoint",
    {
      title: "Save a sandbox to disk",
      description:
        "Save a running sandbox (files, memory, running processes) to disk with one short pause; it keeps running. " +
        "Returns JSON {id, name, bytes}. Start new sandboxes from it any time later with sandbox_restore.",
      inputSchema: checkpointInput,
    },
    (a) =>
      checked("sandbox_checkpoint", a, checkpointInput, async () => {
        const sb = await sandboxOf("sandbox_checkpoint", a);
        const cp = await sb.checkpoint(a.name === undefined ? {} : { name: a.name });
        return { id: cp.id, name: cp.name, sandbox: cp.sandboxId, bytes: cp.bytes };
      }),
  );

  const restoreInput = input({
    checkpoint: z.string().describe("Checkpoint id, as returned by sandbox_checkpoint (e.g. cp-0123456789ab)."),
    count: z.number().int().min(1).max(64).optional().describe("How many sandboxes to start from it (default 1)."),
  });
  mcp.registerTool(
    "sandbox_restore",
    {
      title: "Start sandboxes from a checkpoint",
      description:
        "Start `count` new sandboxes from a checkpoint, each resuming its saved files, memory and processes. " +
        "Returns a JSON array of the new sandbox ids.",
      inputSchema: restoreInput,
    },
    (a) =>
      checked("sandbox_restore", a, restoreInput, async () =>
        (await server.forkCheckpoint(a.checkpoint, a.count ?? 1)).map((s) => s.id),
      ),
  );

  const terminateInput = input(sandboxIds);
  mcp.registerTool(
    "sandbox_terminate",
    {
      title: "Terminate a sandbox",
      description: "Stop a sandbox and free its resources. Its children are not affected.",
      inputSchema: terminateInput,
    },
    (a) =>
      checked("sandbox_terminate", a, terminateInput, async () => {
        const sb = await sandboxOf("sandbox_terminate", a);
        await sb.terminate();
        return { id: sb.id, status: "terminated" };
      }),
  );
}
