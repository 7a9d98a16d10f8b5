// The `mitos` command tree (commander). Every command talks to mitosd through
// @mitos/sdk; only `mitos server` / `mitos up` start mitosd itself.

import { readFileSync } from "node:fs";
import path from "node:path";
import {
  type ExecutionError,
  type NetworkPolicy,
  type Result,
  resolveConfig,
  type Sandbox,
  type TemplateSpec,
} from "@mitos/sdk";
import { Command, InvalidArgumentError, Option } from "commander";
import { renderResult } from "./cells.js";
import { addGlobals, examples, type GlobalOpts, json, serverFor } from "./command-kit.js";
import { runServer, up } from "./daemon.js";
import { formatChecks, runChecks } from "./doctor.js";
import { registerE2bCommands } from "./e2b-commands.js";
import { EXIT, exitCodeFor, formatError, UsageError } from "./errors.js";
import {
  formatBuildEvent,
  formatBytes,
  formatDuration,
  formatElapsed,
  type SandboxRow,
  sandboxTable,
  table,
} from "./format.js";
import { type Io, processIo } from "./io.js";
import { registerKeyCommands } from "./key-commands.js";
import { runShell } from "./shell.js";
import { startSpinner } from "./spinner.js";
import { runTop, topFrame } from "./top.js";

export const VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(path.resolve(import.meta.dirname, "../package.json"), "utf8")) as {
      version?: string;
    };
    return pkg.version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
})();

// ---- option parsers (commander turns InvalidArgumentError into a usage error, exit 2)

export function parseSeconds(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n <= 0) {
    throw new InvalidArgumentError("expected a positive number of seconds.");
  }
  return n;
}

export function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError("expected a positive integer.");
  }
  return n;
}

export function collectEnv(value: string, prev: Record<string, string> = {}): Record<string, string> {
  const i = value.indexOf("=");
  if (i <= 0) throw new InvalidArgumentError(`expected KEY=VALUE, got "${value}".`);
  return { ...prev, [value.slice(0, i)]: value.slice(i + 1) };
}

/** Flags that shape a network policy (docs/network.md). */
interface NetworkFlags {
  network?: string;
  allowOut?: string[];
  denyOut?: string[];
}

/** The policy the flags ask for; undefined when none was given. Rules alone imply egress deny. */
export function networkOf(o: NetworkFlags): NetworkPolicy | undefined {
  if (o.network === undefined && o.allowOut === undefined && o.denyOut === undefined) return undefined;
  const egress = o.network ?? "deny";
  if (egress !== "deny" && egress !== "allow") throw new UsageError(`--network must be deny or allow, got "${egress}"`);
  return { egress, ...(o.allowOut ? { allowOut: o.allowOut } : {}), ...(o.denyOut ? { denyOut: o.denyOut } : {}) };
}

function networkOptions(c: Command): Command {
  return c
    .option(
      "--network <egress>",
      "network policy: egress deny (only --allow-out passes) or allow (the template needs a NIC)",
    )
    .option(
      "--allow-out <rule>",
      "allow: CIDR, address, name or *.suffix, each with optional :port (repeatable)",
      collect,
    )
    .option("--deny-out <rule>", "deny (wins over allow; same forms as --allow-out; repeatable)", collect);
}

export function collect(value: string, prev: string[] = []): string[] {
  return [...prev, value];
}

export function collectList(value: string, prev: string[] = []): string[] {
  return [
    ...prev,
    ...value
      .split(/[,\s]+/)
      .map((s) => s.trim())
      .filter((s) => s !== ""),
  ];
}

/**
 * How `sandbox exec` runs its arguments: one argument is a shell command line
 * (`/bin/sh -c`), several are an argv run directly. A leading `--` is dropped.
 */
export function splitCommand(words: string[]): { command: string; args: string[] | undefined } {
  const w = words[0] === "--" ? words.slice(1) : words;
  if (w.length === 0) throw new UsageError("no command given: mitos sandbox exec <id> <command...>");
  if (w.length === 1) return { command: w[0] ?? "", args: undefined };
  return { command: w[0] ?? "", args: w.slice(1) };
}

// ---- helpers

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) throw new UsageError("no code given: pass --code '…', --file <path>, or pipe it on stdin");
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

function rowOf(s: Sandbox): SandboxRow {
  return {
    id: s.id,
    templateId: s.templateId,
    parentId: s.parentId,
    state: s.state,
    privateBytes: s.memory?.privateBytes,
    sharedBytes: s.memory?.sharedBytes,
    deadlineUnix: s.deadlineUnix,
  };
}

// ---- the program

export function buildProgram(io: Io, setCode: (code: number) => void): Command {
  const program = new Command("mitos");
  program
    .description("Mitos: forkable QEMU microVM sandboxes for AI agents")
    .version(VERSION, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .showSuggestionAfterError(true)
    .enablePositionalOptions();
  addGlobals(program);
  program.addHelpText(
    "after",
    `${examples(
      "mitos up",
      "mitos sandbox create --pool python",
      "mitos fork <sandbox-id> --count 8",
      "mitos sandbox exec <fork-id> python3 -c 'print(42)'",
      "mitos sandbox shell <sandbox-id>",
      "mitos top",
    )}
Environment:
  MITOS_BASE_URL   mitosd address (default http://127.0.0.1:8080)
  MITOS_API_KEY    API token (default: read from \${MITOS_DATA_DIR:-/var/lib/mitos}/token)
  MITOS_DATA_DIR   mitosd's data dir (token, images, logs)

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 124 timeout; \`sandbox exec\` exits with the command's code.
`,
  );

  // ---- mitos server / up

  program
    .command("server")
    .description("run mitosd (the Mitos daemon) in the foreground; Ctrl-C stops it")
    .option("--host <host>", "address to bind (default 127.0.0.1; env MITOS_HOST)")
    .option("--port <port>", "port (default 8080; env MITOS_PORT)")
    .option("--data-dir <dir>", "data dir: images, templates, token (default /var/lib/mitos; env MITOS_DATA_DIR)")
    .addHelpText("after", examples("mitos server", "mitos server --port 9090 --data-dir /tmp/mitos"))
    .action(async (opts: { host?: string; port?: string; dataDir?: string }) => {
      setCode(await runServer(opts, io.env));
    });

  addGlobals(
    program
      .command("up")
      .description("start mitosd in the background and wait until it answers (does nothing if it already runs)")
      .option("--host <host>", "address to bind (default: the host of --url / MITOS_BASE_URL)")
      .option("--port <port>", "port (default: the port of --url / MITOS_BASE_URL)")
      .option(
        "--data-dir <dir>",
        "data dir (default $MITOS_DATA_DIR, else /var/lib/mitos); the log goes to <dir>/mitosd.log",
      )
      .option("--wait <seconds>", "how long to wait for /v1/health", parseSeconds, 60)
      .addHelpText("after", examples("mitos up", "mitos up --port 9090 --data-dir /tmp/mitos")),
  ).action(async (opts: { host?: string; port?: string; dataDir?: string; wait: number }, cmd: Command) => {
    const { baseUrl } = resolveConfig({ baseUrl: cmd.optsWithGlobals<GlobalOpts>().url }, io.env, () => "");
    setCode(
      await up(
        {
          baseUrl,
          waitSeconds: opts.wait,
          ...(opts.host ? { host: opts.host } : {}),
          ...(opts.port ? { port: opts.port } : {}),
          ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
        },
        io,
      ),
    );
  });

  // ---- mitos sandbox …

  const sandbox = program
    .command("sandbox")
    .alias("sb")
    .description("create, list, run commands in, and terminate sandboxes")
    .enablePositionalOptions();

  addGlobals(
    networkOptions(sandbox.command("create"))
      .description("create a sandbox from a template (from its warm pool when one is warm) and print its id")
      .argument("[template]", "template to start from (same as --pool)")
      .option("--pool <template>", "template (pool) to start from, e.g. python")
      .addOption(new Option("--template <template>", "synonym of --pool").hideHelp(false))
      .option("--timeout <seconds>", "reap the sandbox this many seconds from now", parseSeconds)
      .option("--id <id>", "id for the sandbox (default: generated sb-<8 hex>)")
      .option("-e, --env <KEY=VALUE>", "environment for commands in the sandbox (repeatable)", collectEnv)
      .option("--json", "print the sandbox object as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos sandbox create --pool python",
        "mitos sandbox create web --network deny --allow-out pypi.org:443 --allow-out '*.pythonhosted.org:443'",
        "SB=$(mitos sandbox create --pool python --timeout 600)",
        "mitos sandbox create --template base --json",
      ),
    )
    .action(
      async (
        positional: string | undefined,
        opts: {
          pool?: string;
          template?: string;
          timeout?: number;
          id?: string;
          env?: Record<string, string>;
          json?: boolean;
        } & NetworkFlags,
        cmd: Command,
      ) => {
        const network = networkOf(opts);
        const given = [positional, opts.pool, opts.template].filter((t): t is string => t !== undefined);
        if (given.length === 0) throw new UsageError("name the template: --pool <template> (e.g. --pool python)");
        if (new Set(given).size > 1) throw new UsageError(`conflicting templates: ${given.join(", ")}`);
        const sb = await serverFor(cmd).fork(given[0] ?? "", {
          ...(opts.id ? { id: opts.id } : {}),
          ...(opts.timeout !== undefined ? { timeoutSeconds: opts.timeout } : {}),
          ...(opts.env ? { env: opts.env } : {}),
          ...(network ? { network } : {}),
        });
        io.out(opts.json ? json(sb) : `${sb.id}\n`);
      },
    );

  addGlobals(
    sandbox
      .command("ls")
      .alias("list")
      .description("list sandboxes: id, template, parent, state, private/shared memory, deadline")
      .option("--json", "print the sandbox objects as JSON"),
  )
    .addHelpText("after", examples("mitos sandbox ls", "mitos sandbox ls --json | jq -r '.[].id'"))
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await serverFor(cmd).listSandboxes();
      io.out(opts.json ? json(list) : sandboxTable(list.map(rowOf)));
    });

  addGlobals(
    sandbox
      .command("info")
      .alias("get")
      .description("show one sandbox")
      .argument("<id>", "sandbox id")
      .option("--json", "print the sandbox object as JSON"),
  ).action(async (id: string, opts: { json?: boolean }, cmd: Command) => {
    const sb = await serverFor(cmd).get(id);
    io.out(opts.json ? json(sb) : sandboxTable([rowOf(sb)]));
  });

  addGlobals(
    sandbox
      .command("exec")
      .description("run a command in a sandbox, streaming its output; exits with the command's exit code")
      .argument("<id>", "sandbox id")
      .argument("<command...>", "one argument: a shell command line (sh -c); several: an argv run without a shell")
      .option("--timeout <seconds>", "kill the command after this many seconds (it then exits 124)", parseSeconds)
      .option("-e, --env <KEY=VALUE>", "environment variable for the command (repeatable)", collectEnv)
      .option("--cwd <dir>", "working directory in the sandbox")
      .passThroughOptions(),
  )
    .addHelpText(
      "after",
      `
Options go before <id>; everything after <id> is the command, dashes included.
With one argument the command runs via /bin/sh -c (quote it to use pipes, $VARS, &&);
with several it runs as an argv, without a shell.
${examples(
  "mitos sandbox exec sb-1a2b3c4d python3 -c 'print(42)'        # argv: python3, -c, print(42)",
  "mitos sandbox exec sb-1a2b3c4d 'ls / | wc -l'                # one argument: sh -c",
  "mitos sandbox exec --timeout 5 -e DEBUG=1 sb-1a2b3c4d make test",
)}`,
    )
    .action(
      async (
        id: string,
        words: string[],
        opts: { timeout?: number; env?: Record<string, string>; cwd?: string },
        cmd: Command,
      ) => {
        const { command, args } = splitCommand(words);
        const sb = await serverFor(cmd).get(id);
        const abort = new AbortController();
        const onInt = () => abort.abort();
        process.once("SIGINT", onInt);
        try {
          const r = await sb.exec(command, {
            ...(args ? { args } : {}),
            ...(opts.timeout !== undefined ? { timeoutSeconds: opts.timeout } : {}),
            ...(opts.env ? { env: opts.env } : {}),
            ...(opts.cwd ? { cwd: opts.cwd } : {}),
            onStdout: (s) => io.out(s),
            onStderr: (s) => io.err(s),
            signal: abort.signal,
          });
          if (r.error) io.err(`mitos: ${r.error}\n`);
          setCode(r.exitCode < 0 ? EXIT.error : r.exitCode);
        } catch (e) {
          if (abort.signal.aborted) {
            setCode(130);
            return;
          }
          throw e;
        } finally {
          process.off("SIGINT", onInt);
        }
      },
    );

  addGlobals(
    sandbox
      .command("run")
      .description(
        "run Python in the sandbox's Jupyter kernel (variables persist); exits 0, 1 if it raised, 124 on timeout",
      )
      .argument("<id>", "sandbox id")
      .option("--code <code>", "the cell's source (default: --file, else stdin)")
      .option("--file <path>", "read the cell from a local file")
      .option("--context <id>", "run in this context (default: the sandbox's default context)")
      .option("--timeout <seconds>", "interrupt the cell after this many seconds (it then exits 124)", parseSeconds)
      .option("-e, --env <KEY=VALUE>", "environment variable for this cell (repeatable)", collectEnv)
      .option("--save-images <dir>", "write image results (PNG, JPEG, SVG) to files in this directory")
      .option("--json", "print the whole execution (results with every MIME type, logs, error) as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos sandbox run sb-1a2b3c4d --code 'x = 41'",
        "mitos sandbox run sb-1a2b3c4d --code 'x + 1'                      # prints 42",
        "mitos sandbox run sb-1a2b3c4d --file plot.py --save-images ./out",
        "echo 'import sys; sys.version' | mitos sandbox run sb-1a2b3c4d",
      ),
    )
    .action(
      async (
        id: string,
        opts: {
          code?: string;
          file?: string;
          context?: string;
          timeout?: number;
          env?: Record<string, string>;
          saveImages?: string;
          json?: boolean;
        },
        cmd: Command,
      ) => {
        const code = opts.code ?? (opts.file ? readFileSync(opts.file, "utf8") : await readStdin());
        const sb = await serverFor(cmd).get(id);
        const abort = new AbortController();
        const onInt = () => abort.abort();
        process.once("SIGINT", onInt);
        let n = 0;
        try {
          const r = await sb.runCode(code, {
            ...(opts.context ? { context: opts.context } : {}),
            ...(opts.timeout !== undefined ? { timeoutSeconds: opts.timeout } : {}),
            ...(opts.env ? { envs: opts.env } : {}),
            ...(opts.json
              ? {}
              : {
                  onStdout: (t: string) => io.out(t),
                  onStderr: (t: string) => io.err(t),
                  onResult: (res: Result) => io.out(renderResult(res, ++n, opts.saveImages)),
                  onError: (e: ExecutionError) => io.err(`${e.traceback || `${e.name}: ${e.value}`}\n`),
                }),
            signal: abort.signal,
          });
          if (opts.json) io.out(json(r));
          setCode(r.exitCode < 0 ? EXIT.error : r.exitCode);
        } catch (e) {
          if (abort.signal.aborted) {
            setCode(130);
            return;
          }
          throw e;
        } finally {
          process.off("SIGINT", onInt);
        }
      },
    );

  addGlobals(
    sandbox
      .command("shell")
      .description("open an interactive terminal in a sandbox; exits with the shell's exit code")
      .argument("<id>", "sandbox id")
      .option("-c, --command <cmd>", "program to run in the terminal instead of sh"),
  )
    .addHelpText(
      "after",
      `
Keys, Ctrl-C included, go to the sandbox; leave with \`exit\` or Ctrl-D.
${examples("mitos sandbox shell sb-1a2b3c4d", "mitos sandbox shell sb-1a2b3c4d --command python3")}`,
    )
    .action(async (id: string, opts: { command?: string }, cmd: Command) => {
      const sb = await serverFor(cmd).get(id);
      setCode(await runShell(sb, opts.command));
    });

  addGlobals(
    sandbox
      .command("port")
      .description("print the URL at which mitosd serves a guest port (no NIC needed), with its access token")
      .argument("<id>", "sandbox id")
      .argument("<port>", "guest TCP port", parsePositiveInt)
      .option("--host", "print the Host-routed URL (http://<port>-<id>.<domain>:<port>/) instead of the path URL")
      .option("--json", "print URLs and the port's access token as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos sandbox port sb-1a2b3c4d 8000",
        'curl -H "X-Mitos-Port-Token: $(mitos sandbox port sb-1a2b3c4d 8000 --json | jq -r .token)" "$(mitos sandbox port sb-1a2b3c4d 8000)"',
      ),
    )
    .action(async (id: string, port: number, opts: { host?: boolean; json?: boolean }, cmd: Command) => {
      const exposed = await (await serverFor(cmd).get(id)).expose(port);
      if (opts.json) return io.out(json(exposed));
      io.out(`${opts.host ? `http://${exposed.host}/` : exposed.url}\n`);
    });

  addGlobals(
    networkOptions(sandbox.command("network"))
      .description("show a sandbox's network policy, or replace it (takes effect at once)")
      .argument("<id>", "sandbox id")
      .option("--json", "print the policy as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos sandbox network sb-1a2b3c4d",
        "mitos sandbox network sb-1a2b3c4d --network deny --allow-out api.openai.com:443",
        "mitos sandbox network sb-1a2b3c4d --network allow --deny-out 203.0.113.0/24",
      ),
    )
    .action(async (id: string, opts: NetworkFlags & { json?: boolean }, cmd: Command) => {
      const sb = await serverFor(cmd).get(id);
      const policy = networkOf(opts);
      if (policy) await sb.setNetwork(policy);
      const p = sb.network;
      if (opts.json) return io.out(json(p ?? null));
      if (!p) return io.out(`${id} has no network device\n`);
      io.out(
        `egress     ${p.egress}\nallow_out  ${(p.allowOut ?? []).join(" ") || "-"}\ndeny_out   ${(p.denyOut ?? []).join(" ") || "-"}\n`,
      );
    });

  addGlobals(
    sandbox
      .command("terminate")
      .alias("rm")
      .description("terminate sandboxes (their VMs are stopped and their memory freed)")
      .argument("<id...>", "sandbox ids"),
  )
    .addHelpText("after", examples("mitos sandbox terminate sb-1a2b3c4d", "mitos sandbox rm sb-1 sb-2 sb-3"))
    .action(async (ids: string[], _opts: unknown, cmd: Command) => {
      const server = serverFor(cmd);
      for (const id of ids) {
        const sb = await server.get(id);
        await sb.terminate();
        io.out(`terminated ${id}\n`);
      }
    });

  addGlobals(
    sandbox
      .command("pause")
      .description("pause sandboxes; --hibernate also frees their memory (saved to disk until resume)")
      .argument("<id...>", "sandbox ids")
      .option("--hibernate", "save each sandbox to disk and stop its VM (host memory freed)"),
  )
    .addHelpText("after", examples("mitos sandbox pause sb-1a2b3c4d", "mitos sandbox pause --hibernate sb-1 sb-2"))
    .action(async (ids: string[], opts: { hibernate?: boolean }, cmd: Command) => {
      const server = serverFor(cmd);
      for (const id of ids) {
        await (await server.get(id)).pause(opts.hibernate ? { hibernate: true } : {});
        io.out(`${opts.hibernate ? "hibernated" : "paused"} ${id}\n`);
      }
    });

  addGlobals(
    sandbox
      .command("resume")
      .description("resume paused or hibernated sandboxes (processes and files as they were, clock stepped)")
      .argument("<id...>", "sandbox ids"),
  )
    .addHelpText("after", examples("mitos sandbox resume sb-1a2b3c4d"))
    .action(async (ids: string[], _opts: unknown, cmd: Command) => {
      const server = serverFor(cmd);
      for (const id of ids) {
        await (await server.get(id)).resume();
        io.out(`resumed ${id}\n`);
      }
    });

  // ---- mitos fork

  addGlobals(
    program
      .command("fork")
      .description("fork a running sandbox into N copy-on-write children (one pause, one capture) and print their ids")
      .argument("<id>", "the sandbox to fork")
      .option("-n, --count <n>", "number of children", parsePositiveInt, 1)
      .option("--json", "print the children as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos fork sb-1a2b3c4d --count 8",
        "for id in $(mitos fork sb-1a2b3c4d -n 4); do mitos sandbox exec $id hostname; done",
      ),
    )
    .action(async (id: string, opts: { count: number; json?: boolean }, cmd: Command) => {
      const source = await serverFor(cmd).get(id);
      // The source is paused only for the capture and keeps running.
      const children = await source.fork(opts.count);
      io.out(opts.json ? json(children) : children.map((c) => `${c.id}\n`).join(""));
    });

  // ---- mitos checkpoint …

  const checkpoint = program
    .command("checkpoint")
    .description("save sandboxes to disk and start new ones from them, any time later")
    .enablePositionalOptions();

  addGlobals(
    checkpoint
      .command("create")
      .description("save a running sandbox (memory, processes, files) with one short pause and print the checkpoint id")
      .argument("<sandbox-id>", "the sandbox to save")
      .option("--name <name>", "a label for the checkpoint")
      .option("--json", "print the checkpoint object as JSON"),
  )
    .addHelpText("after", examples("mitos checkpoint create sb-1a2b3c4d --name after-setup"))
    .action(async (id: string, opts: { name?: string; json?: boolean }, cmd: Command) => {
      const sb = await serverFor(cmd).get(id);
      const spin = startSpinner(`checkpointing ${id}`);
      try {
        const cp = await sb.checkpoint(opts.name === undefined ? {} : { name: opts.name });
        spin.stop(`checkpoint ${cp.id}: ${formatBytes(cp.bytes)} (${formatBytes(cp.addedBytes)} new)`);
        io.out(opts.json ? json(cp) : `${cp.id}\n`);
      } catch (e) {
        spin.stop(`checkpoint of ${id} failed`);
        throw e;
      }
    });

  addGlobals(
    checkpoint
      .command("ls")
      .alias("list")
      .description("list checkpoints: id, name, sandbox, template, size, created")
      .option("--json", "print the checkpoint objects as JSON"),
  ).action(async (opts: { json?: boolean }, cmd: Command) => {
    const list = await serverFor(cmd).listCheckpoints();
    if (opts.json) return io.out(json(list));
    if (list.length === 0) return io.out("no checkpoints\n");
    io.out(
      table(
        ["ID", "NAME", "SANDBOX", "TEMPLATE", "SIZE", "CREATED"],
        list.map((c) => [c.id, c.name ?? "-", c.sandboxId, c.templateId, formatBytes(c.bytes), c.createdAt]),
      ),
    );
  });

  addGlobals(
    checkpoint
      .command("fork")
      .alias("restore")
      .description("start N new sandboxes from a checkpoint (they share its pages) and print their ids")
      .argument("<checkpoint-id>", "the checkpoint")
      .option("-n, --count <n>", "number of sandboxes", parsePositiveInt, 1)
      .option("--json", "print the sandboxes as JSON"),
  )
    .addHelpText("after", examples("mitos checkpoint fork cp-0123456789ab --count 3"))
    .action(async (id: string, opts: { count: number; json?: boolean }, cmd: Command) => {
      const sandboxes = await serverFor(cmd).forkCheckpoint(id, opts.count);
      io.out(opts.json ? json(sandboxes) : sandboxes.map((s) => `${s.id}\n`).join(""));
    });

  addGlobals(
    checkpoint
      .command("rm")
      .alias("delete")
      .description("delete checkpoints (chunks other checkpoints share stay)")
      .argument("<id...>", "checkpoint ids"),
  ).action(async (ids: string[], _opts: unknown, cmd: Command) => {
    const server = serverFor(cmd);
    for (const id of ids) {
      await server.deleteCheckpoint(id);
      io.out(`deleted ${id}\n`);
    }
  });

  // ---- mitos template …

  const template = program
    .command("template")
    .description("build, list and delete templates")
    .enablePositionalOptions();

  addGlobals(
    networkOptions(template.command("build"))
      .description("build a template (boot an image, install packages, run init commands, snapshot it)")
      .argument("<id>", "template id")
      .option(
        "--image <name>",
        "image to start from: base, python, or an OCI image (registry/repo:tag, oci-archive:PATH, docker-archive:PATH)",
      )
      .option("--packages <list>", "packages to install, comma-separated (repeatable)", collectList)
      .option("--init <cmd>", "shell command run once before the snapshot (repeatable, in order)", collect)
      .option("-e, --env <KEY=VALUE>", "environment baked into the template (repeatable)", collectEnv)
      .option("--vcpus <n>", "vCPUs per sandbox", parsePositiveInt)
      .option("--memory <mib>", "memory per sandbox, MiB", parsePositiveInt)
      .option(
        "--init-wait <seconds>",
        "how long the booted guest settles before the init commands (default 0)",
        parseSeconds,
      )
      .option("--init-timeout <seconds>", "limit on each init command (default 600)", parseSeconds)
      .option(
        "--disk-size <mib>",
        "a workspace disk of this size at /workspace, on the host (files may exceed guest RAM; default: in RAM)",
        parsePositiveInt,
      )
      .option("--follow", "print the build log as it happens: image, boot, each step (cached or run) and its output")
      .option("--json", "print the template object as JSON"),
  )
    .addHelpText(
      "after",
      examples(
        "mitos template build py-data --image python --packages numpy,pandas",
        "mitos template build app --image 127.0.0.1:5000/team/app:1 --init 'pip install -r /app/req.txt' --follow",
        "mitos template build web --image base --packages nodejs --init 'mkdir -p /srv/app'",
      ),
    )
    .action(
      async (
        id: string,
        opts: {
          image?: string;
          packages?: string[];
          init?: string[];
          env?: Record<string, string>;
          vcpus?: number;
          memory?: number;
          initWait?: number;
          initTimeout?: number;
          diskSize?: number;
          follow?: boolean;
          json?: boolean;
        } & NetworkFlags,
        cmd: Command,
      ) => {
        const network = networkOf(opts);
        const spec: TemplateSpec = {
          ...(network ? { network } : {}),
          ...(opts.image ? { image: opts.image } : {}),
          ...(opts.packages ? { packages: opts.packages } : {}),
          ...(opts.init ? { init: opts.init } : {}),
          ...(opts.env ? { env: opts.env } : {}),
          ...(opts.initWait !== undefined ? { initWaitSeconds: opts.initWait } : {}),
          ...(opts.initTimeout !== undefined ? { initTimeoutSeconds: opts.initTimeout } : {}),
          ...(opts.diskSize !== undefined ? { diskSizeMib: opts.diskSize } : {}),
          ...(opts.vcpus !== undefined || opts.memory !== undefined
            ? {
                resources: {
                  ...(opts.vcpus !== undefined ? { vcpuCount: opts.vcpus } : {}),
                  ...(opts.memory !== undefined ? { memSizeMib: opts.memory } : {}),
                },
              }
            : {}),
        };
        const t0 = Date.now();
        if (opts.follow) {
          // The log goes to stderr, so stdout stays the id (or the JSON) for scripts.
          const t = await serverFor(cmd).createTemplate(id, spec, { onEvent: (e) => io.err(formatBuildEvent(e)) });
          io.err(
            `template ${id} ready (${formatElapsed(Date.now() - t0)}${t.version ? `, version ${t.version}` : ""})\n`,
          );
          io.out(opts.json ? json(t) : `${t.id}\n`);
          return;
        }
        const spin = startSpinner(`building template ${id}`);
        try {
          const t = await serverFor(cmd).createTemplate(id, spec);
          spin.stop(`template ${id} ready (${formatElapsed(Date.now() - t0)})`);
          io.out(opts.json ? json(t) : `${t.id}\n`);
        } catch (e) {
          spin.stop(`template ${id} failed (${formatElapsed(Date.now() - t0)})`);
          throw e;
        }
      },
    );

  addGlobals(
    template
      .command("ls")
      .alias("list")
      .description("list templates")
      .option("--json", "print the template objects as JSON"),
  ).action(async (opts: { json?: boolean }, cmd: Command) => {
    const list = await serverFor(cmd).listTemplates();
    if (opts.json) return io.out(json(list));
    if (list.length === 0) return io.out("no templates\n");
    io.out(
      table(
        ["ID", "VERSION", "IMAGE", "STEPS", "READY", "CREATED", "BUILD TIME"],
        list.map((t) => [
          t.id,
          t.version ?? "-",
          t.image ? `${t.image.reference}@${t.image.digest.slice(0, 19)}` : "built-in",
          String(t.steps ?? "-"),
          t.ready ? "yes" : "no",
          t.createdAt,
          formatDuration(t.creationTimeMs / 1000),
        ]),
      ),
    );
  });

  addGlobals(
    template
      .command("rm")
      .alias("delete")
      .description("delete templates and free their RAM bases (refused while sandboxes or a warm pool use them)")
      .argument("<id...>", "template ids")
      .option("--force", "terminate the template's sandboxes and warm pool first"),
  )
    .addHelpText("after", examples("mitos template rm py-data", "mitos template rm python --force"))
    .action(async (ids: string[], opts: { force?: boolean }, cmd: Command) => {
      const server = serverFor(cmd);
      for (const id of ids) {
        await server.deleteTemplate(id, { force: opts.force === true });
        io.out(`deleted ${id}\n`);
      }
    });

  registerE2bCommands(program, io);
  registerKeyCommands(program, io);

  // ---- mitos pool …

  const pool = program.command("pool").description("warm pools of ready-to-claim sandboxes").enablePositionalOptions();
  addGlobals(
    pool
      .command("ls")
      .alias("list")
      .description("list warm pools: warm, target and claimed counts per template")
      .option("--json", "print the pools as JSON"),
  ).action(async (opts: { json?: boolean }, cmd: Command) => {
    const list = await serverFor(cmd).pools();
    if (opts.json) return io.out(json(list));
    if (list.length === 0) return io.out("no pools\n");
    io.out(
      table(
        ["TEMPLATE", "WARM", "TARGET", "CLAIMED"],
        list.map((p) => [p.template, p.warm, p.target, p.claimed]),
      ),
    );
  });

  // ---- mitos top / doctor

  addGlobals(
    program
      .command("top")
      .description("live view of sandboxes with their state and private/shared memory; q or Ctrl-C quits")
      .option("--once", "print one frame and exit (for scripts)")
      .option("--interval <seconds>", "refresh period", parseSeconds, 1),
  )
    .addHelpText("after", examples("mitos top", "mitos top --once"))
    .action(async (opts: { once?: boolean; interval: number }, cmd: Command) => {
      const server = serverFor(cmd);
      if (opts.once) return io.out(await topFrame(server));
      setCode(await runTop(server, opts.interval * 1000));
    });

  addGlobals(
    program
      .command("doctor")
      .description("check this host and mitosd: QEMU, accelerator, /dev/shm, guest images, daemon and token")
      .option("--json", "print the checks as JSON"),
  )
    .addHelpText(
      "after",
      `\nExits 1 if any check fails (warnings, such as running under TCG, do not fail).\n${examples("mitos doctor")}`,
    )
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const g = cmd.optsWithGlobals<GlobalOpts>();
      const cfg = resolveConfig(
        { ...(g.url ? { baseUrl: g.url } : {}), ...(g.apiKey ? { apiKey: g.apiKey } : {}) },
        io.env,
      );
      const results = await runChecks(cfg.baseUrl, cfg.apiKey, io.env);
      io.out(opts.json ? json(results) : formatChecks(results));
      setCode(results.some((r) => r.status === "fail") ? EXIT.error : EXIT.ok);
    });

  return program;
}

/** Runs `mitos` with the given arguments (without node and script); resolves with the exit code. */
export async function run(argv: string[], io: Io = processIo): Promise<number> {
  let code = EXIT.ok as number;
  const program = buildProgram(io, (c) => {
    code = c;
  });
  try {
    await program.parseAsync(argv, { from: "user" });
    return code;
  } catch (e) {
    io.err(formatError(e));
    if (io.env.MITOS_DEBUG && e instanceof Error && e.stack) io.err(`${e.stack}\n`);
    return exitCodeFor(e);
  }
}
