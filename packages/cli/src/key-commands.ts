// `mitos key create|ls|rm`: API keys with scopes (docs/security.md "Keys").

import type { ApiKey, TenantLimits } from "@mitos/sdk";
import type { Command } from "commander";
import { addGlobals, examples, json, serverFor } from "./command-kit.js";
import { table } from "./format.js";
import type { Io } from "./io.js";
import { parsePositiveInt } from "./program.js";

interface CreateOpts {
  scope: string;
  tenant?: string;
  name?: string;
  maxSandboxes?: number;
  maxGuestMemoryMib?: number;
  maxForkCount?: number;
  maxLifetimeSeconds?: number;
  json?: boolean;
}

function limitsText(k: ApiKey): string {
  if (!k.limits) return "-";
  const parts = Object.entries(k.limits).map(([name, v]) => `${name}=${v}`);
  return parts.length > 0 ? parts.join(",") : "host caps";
}

export function registerKeyCommands(program: Command, io: Io): void {
  const key = program
    .command("key")
    .description("API keys: admin keys, and tenants' keys with their own caps (admin only)")
    .enablePositionalOptions();

  addGlobals(
    key
      .command("create")
      .description("create a key and print it (shown only now)")
      .requiredOption("--scope <scope>", "admin, or tenant (sees only its tenant's sandboxes and templates)")
      .option("--tenant <name>", "the tenant a tenant key acts for (created on first use)")
      .option("--name <name>", "a label for the key")
      .option("--max-sandboxes <n>", "tenant cap: live sandboxes", parsePositiveInt)
      .option("--max-guest-memory-mib <n>", "tenant cap: guest memory of its live sandboxes", parsePositiveInt)
      .option("--max-fork-count <n>", "tenant cap: children per fork", parsePositiveInt)
      .option("--max-lifetime-seconds <n>", "tenant cap: a sandbox's whole life", parsePositiveInt)
      .option("--json", "print the key object as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos key create --scope tenant --tenant acme --max-sandboxes 20 --max-fork-count 8",
        "export MITOS_API_KEY=$(mitos key create --scope tenant --tenant acme --json | jq -r .key)",
      ),
    )
    .action(async (opts: CreateOpts, cmd: Command) => {
      if (opts.scope !== "admin" && opts.scope !== "tenant") {
        cmd.error(`error: --scope must be admin or tenant, got "${opts.scope}"`, { exitCode: 2 });
      }
      const limits: TenantLimits = {
        ...(opts.maxSandboxes !== undefined ? { maxSandboxes: opts.maxSandboxes } : {}),
        ...(opts.maxGuestMemoryMib !== undefined ? { maxGuestMemoryMib: opts.maxGuestMemoryMib } : {}),
        ...(opts.maxForkCount !== undefined ? { maxForkCount: opts.maxForkCount } : {}),
        ...(opts.maxLifetimeSeconds !== undefined ? { maxLifetimeSeconds: opts.maxLifetimeSeconds } : {}),
      };
      const k = await serverFor(cmd).createKey({
        scope: opts.scope as "admin" | "tenant",
        ...(opts.tenant !== undefined ? { tenant: opts.tenant } : {}),
        ...(opts.name !== undefined ? { name: opts.name } : {}),
        ...(Object.keys(limits).length > 0 ? { limits } : {}),
      });
      if (opts.json) return io.out(json(k));
      io.err(`key ${k.id} (${k.scope}${k.tenant ? ` of tenant ${k.tenant}` : ""}) created; it is shown only now\n`);
      io.out(`${k.key}\n`);
    });

  addGlobals(
    key
      .command("ls")
      .alias("list")
      .description("list keys: id, scope, tenant, caps, prefix (never the keys themselves)")
      .option("--json", "print the key objects as JSON"),
  ).action(async (opts: { json?: boolean }, cmd: Command) => {
    const keys = await serverFor(cmd).listKeys();
    if (opts.json) return io.out(json(keys));
    if (keys.length === 0) return io.out("no API keys (the daemon's own token is not listed)\n");
    io.out(
      table(
        ["ID", "SCOPE", "TENANT", "LIMITS", "NAME", "PREFIX", "CREATED"],
        keys.map((k) => [k.id, k.scope, k.tenant ?? "-", limitsText(k), k.name || "-", `${k.prefix}…`, k.createdAt]),
      ),
    );
  });

  addGlobals(
    key
      .command("rm")
      .alias("revoke")
      .description("revoke keys: calls with them get 401 at once")
      .argument("<id...>", "key ids (from `mitos key ls`)"),
  ).action(async (ids: string[], _opts: unknown, cmd: Command) => {
    const server = serverFor(cmd);
    for (const id of ids) {
      await server.revokeKey(id);
      io.out(`revoked ${id}\n`);
    }
  });
}
