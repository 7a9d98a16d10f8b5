// What every command shares: the global options, the server they name, and
// help and output helpers.

import { SandboxServer } from "@mitos/sdk";
import type { Command } from "commander";

export interface GlobalOpts {
  url?: string;
  apiKey?: string;
}

export function addGlobals(cmd: Command): Command {
  return cmd
    .option("--url <url>", "mitosd address (default: $MITOS_BASE_URL, else http://127.0.0.1:8080)")
    .option("--api-key <token>", "API token (default: $MITOS_API_KEY, else $MITOS_DATA_DIR/token)");
}

export function serverFor(cmd: Command): SandboxServer {
  const o = cmd.optsWithGlobals<GlobalOpts>();
  return new SandboxServer({
    ...(o.url ? { baseUrl: o.url } : {}),
    ...(o.apiKey ? { apiKey: o.apiKey } : {}),
  });
}

export function examples(...lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  $ ${l}`).join("\n")}\n`;
}

export function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}
