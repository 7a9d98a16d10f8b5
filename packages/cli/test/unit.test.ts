// The CLI without a server: argument parsing, exit codes, error and table output.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ExecTimeoutError, InternalError, NotFoundError, SandboxExpiredError, UnavailableError } from "@mitos/sdk";
import { CommanderError } from "commander";
import { bindAddress, mitosdArgs, mitosdPath } from "../src/daemon.js";
import { checkAccel, checkImages, formatChecks } from "../src/doctor.js";
import { CliError, EXIT, exitCodeFor, formatError, UsageError } from "../src/errors.js";
import { formatBytes, formatDeadline, formatDuration, sandboxTable, table } from "../src/format.js";
import { bufferIo } from "../src/io.js";
import { collectEnv, collectList, parsePositiveInt, parseSeconds, run, splitCommand } from "../src/program.js";

// Nothing listens on port 1: any call that reaches the network fails fast.
const offline = { MITOS_BASE_URL: "http://127.0.0.1:1", MITOS_API_KEY: "x" };

async function cli(...argv: string[]) {
  const io = bufferIo(offline);
  const code = await run(argv, io);
  return { code, out: io.stdout, err: io.stderr };
}

describe("argument parsing", () => {
  it("prints help with examples and exits 0", async () => {
    for (const argv of [["--help"], ["sandbox", "--help"], ["sandbox", "exec", "--help"], ["help", "fork"]]) {
      const r = await cli(...argv);
      assert.equal(r.code, 0, argv.join(" "));
      assert.match(r.out, /Usage: mitos/);
    }
    const top = await cli("--help");
    assert.match(top.out, /mitos sandbox exec <fork-id> python3 -c 'print\(42\)'/);
    assert.match(top.out, /Exit codes/);
    assert.match((await cli("sandbox", "exec", "--help")).out, /sh -c/);
  });

  it("prints the version", async () => {
    const r = await cli("--version");
    assert.equal(r.code, 0);
    assert.match(r.out, /^\d+\.\d+\.\d+\n$/);
  });

  it("exits 2 on usage errors", async () => {
    const cases: string[][] = [
      [],
      ["bogus"],
      ["sandbox"],
      ["sandbox", "create"],
      ["sandbox", "create", "--pool", "a", "--template", "b"],
      ["sandbox", "create", "--pool", "python", "--timeout", "soon"],
      ["sandbox", "exec", "sb-1"],
      ["sandbox", "exec", "--timeout", "-3", "sb-1", "ls"],
      ["sandbox", "exec", "sb-1", "--"],
      ["fork", "sb-1", "--count", "0"],
      ["fork", "sb-1", "--count", "two"],
      ["fork"],
      ["sandbox", "ls", "--bogus"],
      ["template", "build"],
      ["top", "--interval", "0"],
    ];
    for (const argv of cases) {
      const r = await cli(...argv);
      assert.equal(r.code, EXIT.usage, `${argv.join(" ")} → ${r.code}: ${r.err}`);
      assert.match(r.err, /error|Usage/, argv.join(" "));
    }
  });

  it("reports an unreachable mitosd as error 1 with a fix", async () => {
    const r = await cli("--url", "http://127.0.0.1:1", "sandbox", "ls");
    assert.equal(r.code, EXIT.error);
    assert.match(r.err, /^error: unavailable: /);
    assert.match(r.err, /\nfix: .*mitos up/);
  });

  it("accepts global options after the subcommand too", async () => {
    const r = await cli("sandbox", "ls", "--url", "http://127.0.0.1:1", "--api-key", "k");
    assert.equal(r.code, EXIT.error);
    assert.match(r.err, /127\.0\.0\.1:1/);
  });

  it("splits exec's command: one word is a shell line, several an argv", () => {
    assert.deepEqual(splitCommand(["echo $HOME | wc -c"]), { command: "echo $HOME | wc -c", args: undefined });
    assert.deepEqual(splitCommand(["python3", "-c", "print(42)"]), { command: "python3", args: ["-c", "print(42)"] });
    assert.deepEqual(splitCommand(["--", "ls", "-la"]), { command: "ls", args: ["-la"] });
    assert.throws(() => splitCommand([]), UsageError);
  });

  it("parses option values", () => {
    assert.equal(parseSeconds("2.5"), 2.5);
    assert.throws(() => parseSeconds("0"));
    assert.throws(() => parseSeconds(""));
    assert.equal(parsePositiveInt("8"), 8);
    assert.throws(() => parsePositiveInt("1.5"));
    assert.throws(() => parsePositiveInt("-1"));
    assert.deepEqual(collectEnv("B=x=y", collectEnv("A=1")), { A: "1", B: "x=y" });
    assert.throws(() => collectEnv("=1"));
    assert.throws(() => collectEnv("NOEQ"));
    assert.deepEqual(collectList("c", collectList("a, b")), ["a", "b", "c"]);
  });
});

describe("exit codes and error output", () => {
  it("maps errors to exit codes", () => {
    assert.equal(exitCodeFor(new NotFoundError({ code: "not_found", message: "x" })), EXIT.notFound);
    assert.equal(exitCodeFor(new SandboxExpiredError({ code: "idle_timeout", message: "x" })), EXIT.notFound);
    assert.equal(exitCodeFor(new ExecTimeoutError({ code: "exec_timeout", message: "x" })), EXIT.timeout);
    assert.equal(exitCodeFor(new UnavailableError({ code: "unavailable", message: "x" })), EXIT.error);
    assert.equal(exitCodeFor(new InternalError({ code: "internal", message: "x" })), EXIT.error);
    assert.equal(exitCodeFor(new CommanderError(1, "commander.unknownOption", "x")), EXIT.usage);
    assert.equal(exitCodeFor(new CommanderError(0, "commander.helpDisplayed", "x")), EXIT.ok);
    assert.equal(exitCodeFor(new UsageError("x")), EXIT.usage);
    assert.equal(exitCodeFor(new CliError("unavailable", "x", "y", 1)), EXIT.error);
    assert.equal(exitCodeFor(new Error("boom")), EXIT.error);
    assert.deepEqual(EXIT, { ok: 0, error: 1, usage: 2, notFound: 3, timeout: 124 });
  });

  it("prints code, message, cause and fix", () => {
    const e = new NotFoundError({
      code: "not_found",
      message: 'no sandbox "x"',
      cause: "it was terminated",
      remediation: "list sandboxes",
    });
    assert.equal(formatError(e), 'error: not_found: no sandbox "x"\ncause: it was terminated\nfix: list sandboxes\n');
    const noCause = formatError(
      new UnavailableError({ code: "unavailable", message: "down", remediation: "mitos up" }),
    );
    assert.equal(noCause, "error: unavailable: down\nfix: mitos up\n");
    assert.match(formatError(new Error("boom")), /^error: internal: boom\nfix: /);
    assert.equal(formatError(new CommanderError(2, "x", "y")), "");
  });
});

describe("formatting", () => {
  it("formats bytes, durations and deadlines", () => {
    assert.equal(formatBytes(undefined), "-");
    assert.equal(formatBytes(512), "512 B");
    assert.equal(formatBytes(1536), "1.5 KiB");
    assert.equal(formatBytes(22 * 1024 * 1024), "22.0 MiB");
    assert.equal(formatBytes(511 * 1024 * 1024), "511 MiB");
    assert.equal(formatBytes(3 * 1024 ** 3), "3.0 GiB");
    assert.equal(formatDuration(45), "45s");
    assert.equal(formatDuration(252), "4m12s");
    assert.equal(formatDuration(7500), "2h05m");
    assert.equal(formatDuration(273600), "3d04h");
    const now = 1_000_000_000_000;
    assert.equal(formatDeadline(undefined, now), "-");
    assert.equal(formatDeadline(now / 1000 + 300, now), "in 5m00s");
    assert.equal(formatDeadline(now / 1000 - 1, now), "expired");
  });

  it("renders a borderless table with aligned columns and no trailing spaces", () => {
    const t = table(
      ["ID", "N"],
      [
        ["a", 1],
        ["longer", 22],
      ],
    );
    assert.equal(t, "ID      N\na       1\nlonger  22\n");
  });

  it("renders the sandbox table", () => {
    const now = 1_000_000_000_000;
    const out = sandboxTable(
      [
        {
          id: "sb-00000001",
          templateId: "python",
          parentId: null,
          state: "ready",
          privateBytes: 22 * 1024 * 1024,
          sharedBytes: 511 * 1024 * 1024,
          deadlineUnix: now / 1000 + 60,
        },
        {
          id: "sb-00000002",
          templateId: "python",
          parentId: "sb-00000001",
          state: "paused",
          privateBytes: undefined,
          sharedBytes: undefined,
          deadlineUnix: undefined,
        },
      ],
      now,
    );
    const lines = out.trimEnd().split("\n");
    assert.deepEqual(lines[0]?.split(/\s+/), ["ID", "TEMPLATE", "PARENT", "STATE", "PRIVATE", "SHARED", "DEADLINE"]);
    assert.deepEqual(lines[1]?.split(/\s{2,}/), [
      "sb-00000001",
      "python",
      "-",
      "ready",
      "22.0 MiB",
      "511 MiB",
      "in 1m00s",
    ]);
    assert.deepEqual(lines[2]?.split(/\s{2,}/), ["sb-00000002", "python", "sb-00000001", "paused", "-", "-", "-"]);
    assert.equal(sandboxTable([]), "no sandboxes\n");
  });
});

describe("daemon and doctor helpers", () => {
  it("derives mitosd's bind address and flags", () => {
    assert.deepEqual(bindAddress("http://127.0.0.1:8080", {}), { host: "127.0.0.1", port: "8080" });
    assert.deepEqual(bindAddress("http://localhost:9000", { port: "9100" }), { host: "localhost", port: "9100" });
    assert.deepEqual(bindAddress("http://[::1]:7000", {}), { host: "::1", port: "7000" });
    assert.deepEqual(mitosdArgs({ host: "0.0.0.0", port: "1", dataDir: "/d" }), [
      "--host",
      "0.0.0.0",
      "--port",
      "1",
      "--data-dir",
      "/d",
    ]);
    assert.match(mitosdPath({}), /packages\/server\/dist\/bin\/mitosd\.js$/);
    assert.equal(mitosdPath({ MITOSD_BIN: "/x/mitosd.js" }), "/x/mitosd.js");
  });

  it("reports TCG as a warning and missing images as a failure with a fix", () => {
    const accel = checkAccel("/nonexistent/cpuinfo", "/nonexistent/kvm");
    assert.equal(accel.status, "warn");
    assert.match(accel.detail, /TCG.*development mode/);
    const images = checkImages("/nonexistent/images");
    assert.equal(images.status, "fail");
    assert.match(images.fix ?? "", /npm run images/);
    const text = formatChecks([accel, images]);
    assert.match(text, /\[FAIL\] guest images/);
    assert.match(text, /fix: /);
    assert.match(text, /1 check failed/);
  });
});
