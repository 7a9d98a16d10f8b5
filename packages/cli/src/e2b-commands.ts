// `mitos e2b key create|ls|rm`: API keys for E2B's SDKs (docs/e2b.md).

import type { Command } from "commander";
import { addGlobals, examples, json, serverFor } from "./command-kit.js";
import { table } from "./format.js";
import type { Io } from "./io.js";

export function registerE2bCommands(program: Command, io: Io): void {
  const e2b = program
    .command("e2b")
    .description("the E2B-compatible front door: API keys for E2B's SDKs")
    .enablePositionalOptions();
  const key = e2b.command("key").description("E2B API keys (e2b_…), kept apart from the admin token");

  addGlobals(
    key
      .command("create")
      .description("issue a key and print it with the environment an E2B program needs")
      .option("--name <name>", "a label for the key")
      .option("--json", "print the key object as JSON"),
  )
    .addHelpText("after", examples('eval "$(mitos e2b key create --name ci)"'))
    .action(async (opts: { name?: string; json?: boolean }, cmd: Command) => {
      const server = serverFor(cmd);
      const k = await server.createE2bKey(opts.name ?? "");
      if (opts.json) return io.out(json(k));
      io.err(`key ${k.id} created; it is shown only now\n`);
      io.out(
        `export E2B_API_KEY=${k.key}\nexport E2B_API_URL=${server.baseUrl}\nexport E2B_SANDBOX_URL=${server.baseUrl}\n`,
      );
    });

  addGlobals(
    key
      .command("ls")
      .alias("list")
      .description("list keys: id, name, prefix, created")
      .option("--json", "print the key objects as JSON"),
  ).action(async (opts: { json?: boolean }, cmd: Command) => {
    const keys = await serverFor(cmd).listE2bKeys();
    if (opts.json) return io.out(json(keys));
    if (keys.length === 0) return io.out("no E2B keys\n");
    io.out(
      table(
        ["ID", "NAME", "PREFIX", "CREATED"],
        keys.map((k) => [k.id, k.name || "-", `${k.prefix}…`, k.createdAt]),
      ),
    );
  });

  addGlobals(
    key
      .command("rm")
      .alias("revoke")
      .description("revoke keys: E2B clients using them get 401 at once")
      .argument("<id...>", "key ids (from `mitos e2b key ls`)"),
  ).action(async (ids: string[], _opts: unknown, cmd: Command) => {
    const server = serverFor(cmd);
    for (const id of ids) {
      await server.revokeE2bKey(id);
      io.out(`revoked ${id}\n`);
    }
  });
}
