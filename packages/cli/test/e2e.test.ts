// The built CLI (packages/cli/dist/bin/mitos.js) against a real mitosd and
// real VMs. Build first: `npm run -s build` (or `npx tsc -b packages/cli`).

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, repoRoot, startMitosd } from "../../../test-support/mitosd.js";

const repo = repoRoot;
const bin = path.join(repo, "packages/cli/dist/bin/mitos.js");
const dataDir = tempDataDir("test-cli");
let daemon: Daemon | undefined;
let env: NodeJS.ProcessEnv = {};

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `mitos <args>` as a separate process, like a user's shell would run it. */
function mitos(args: string[], opts: { timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env, cwd: repo, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const t = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A command line split like a POSIX shell would (single quotes only), so API.md's lines run verbatim. */
function shellWords(line: string): string[] {
  const words: string[] = [];
  for (const m of line.matchAll(/'([^']*)'|(\S+)/g)) words.push(m[1] ?? m[2] ?? "");
  return words;
}

before(async () => {
  if (!existsSync(bin)) execFileSync("npx", ["tsc", "-b", "packages/cli"], { cwd: repo, stdio: "inherit" });
  daemon = await startMitosd(dataDir);
  env = { ...daemon.env };
  delete env.MITOS_DATA_DIR;
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

describe("mitos CLI against mitosd", () => {
  let source = "";
  let forks: string[] = [];

  it("runs the three API.md lines verbatim", async () => {
    const create = await mitos(shellWords("sandbox create --pool python"), { timeoutMs: 120_000 });
    assert.equal(create.code, 0, create.stderr);
    source = create.stdout.trim();
    assert.match(source, /^sb-[0-9a-f]{8}$/);

    const fork = await mitos(shellWords(`fork ${source} --count 8`));
    assert.equal(fork.code, 0, fork.stderr);
    forks = fork.stdout.trim().split("\n");
    assert.equal(forks.length, 8);
    assert.equal(new Set(forks).size, 8);
    for (const id of forks) assert.match(id, /^sb-[0-9a-f]{8}$/);

    const exec = await mitos(shellWords(`sandbox exec ${forks[0]} python3 -c 'print(42)'`));
    assert.equal(exec.code, 0, exec.stderr);
    assert.equal(exec.stdout, "42\n");
  });

  it("propagates the command's exit code and both output streams", async () => {
    const r = await mitos(["sandbox", "exec", forks[1] ?? "", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert.equal(r.code, 7);
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    const one = await mitos(["sandbox", "exec", forks[1] ?? "", "echo $((6*7)) | tr 4 X; exit 5"]);
    assert.equal(one.code, 5);
    assert.equal(one.stdout, "X2\n");
  });

  it("exits 124 when a command hits --timeout", async () => {
    const r = await mitos(["sandbox", "exec", "--timeout", "1", forks[2] ?? "", "sleep 20"]);
    assert.equal(r.code, 124, r.stderr);
  });

  it("runs Python in the kernel with `sandbox run`: state kept, exit codes, images saved", async () => {
    const id = forks[4] ?? "";
    assert.equal((await mitos(["sandbox", "run", id, "--code", "x = 41"])).code, 0);
    const r = await mitos(["sandbox", "run", id, "--code", "print('out')\nx + 1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "out\n42\n");
    const bad = await mitos(["sandbox", "run", id, "--code", "1/0"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /ZeroDivisionError: division by zero/);
    const dir = mkdtempSync(path.join(os.tmpdir(), "mitos-run-"));
    try {
      const plot = await mitos([
        "sandbox",
        "run",
        id,
        "--save-images",
        dir,
        "--code",
        "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()",
      ]);
      assert.equal(plot.code, 0, plot.stderr);
      assert.match(plot.stdout, /\[image\/png, \d+ bytes: .*result-1\.png\]/);
      assert.deepEqual([...readFileSync(path.join(dir, "result-1.png")).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const j = await mitos(["sandbox", "run", id, "--json", "--code", "x"]);
    assert.equal((JSON.parse(j.stdout) as { text: string }).text, "41");
    const slow = await mitos(["sandbox", "run", id, "--timeout", "2", "--code", "while True: pass"]);
    assert.equal(slow.code, 124, slow.stderr);
  });

  it("exits 3 for an unknown sandbox, with code and fix on stderr", async () => {
    const r = await mitos(["sandbox", "exec", "sb-00000000", "true"]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /^error: not_found: /);
    assert.match(r.stderr, /\nfix: /);
    assert.equal((await mitos(["fork", "sb-00000000", "--count", "2"])).code, 3);
    assert.equal((await mitos(["sandbox", "terminate", "sb-00000000"])).code, 3);
  });

  it("checkpoint create / ls --json / fork / rm", async () => {
    assert.equal((await mitos(["sandbox", "exec", source, "echo cli-cp > /workspace/c.txt"])).code, 0);
    const made = await mitos(["checkpoint", "create", source, "--name", "cli"]);
    assert.equal(made.code, 0, made.stderr);
    const id = made.stdout.trim();
    assert.match(id, /^cp-[0-9a-f]{12}$/);
    const ls = await mitos(["checkpoint", "ls", "--json"]);
    const list = JSON.parse(ls.stdout) as Array<{ id: string; name: string; sandboxId: string }>;
    assert.ok(list.some((c) => c.id === id && c.name === "cli" && c.sandboxId === source));
    const fork = await mitos(["checkpoint", "fork", id, "--count", "2"]);
    assert.equal(fork.code, 0, fork.stderr);
    const kids = fork.stdout.trim().split("\n");
    assert.equal(kids.length, 2);
    for (const k of kids) {
      const r = await mitos(["sandbox", "exec", k, "cat /workspace/c.txt"]);
      assert.equal(r.stdout, "cli-cp\n");
    }
    assert.equal((await mitos(["sandbox", "terminate", ...kids])).code, 0);
    assert.equal((await mitos(["checkpoint", "rm", id])).code, 0);
    assert.equal((await mitos(["checkpoint", "rm", id])).code, 3, "gone: not_found");
  });

  it("e2b key create / ls --json / rm: the printed environment reaches the E2B API", async () => {
    const made = await mitos(["e2b", "key", "create", "--name", "cli"]);
    assert.equal(made.code, 0, made.stderr);
    const envs = Object.fromEntries(
      [...made.stdout.matchAll(/^export (E2B_\w+)=(\S+)$/gm)].map((m) => [m[1] as string, m[2] as string]),
    );
    assert.match(envs.E2B_API_KEY ?? "", /^e2b_[0-9a-f]+$/);
    assert.equal(envs.E2B_API_URL, env.MITOS_BASE_URL);
    assert.equal(envs.E2B_SANDBOX_URL, env.MITOS_BASE_URL);
    const list = async () =>
      (await fetch(`${envs.E2B_API_URL}/v2/sandboxes`, { headers: { "X-API-KEY": envs.E2B_API_KEY as string } }))
        .status;
    assert.equal(await list(), 200);
    const ls = JSON.parse((await mitos(["e2b", "key", "ls", "--json"])).stdout) as Array<{ id: string; name: string }>;
    const mine = ls.find((k) => k.name === "cli");
    assert.ok(mine, JSON.stringify(ls));
    assert.equal((await mitos(["e2b", "key", "rm", mine.id])).code, 0);
    assert.equal(await list(), 401, "a revoked key is refused at once");
    assert.equal((await mitos(["e2b", "key", "rm", mine.id])).code, 3, "gone: not_found");
  });

  it("template rm: not_found exits 3, a template in use is refused, --force frees it", async () => {
    const none = await mitos(["template", "rm", "no-such-template"]);
    assert.equal(none.code, 3, none.stderr);
    assert.match(none.stderr, /^error: not_found: /);
    // The python template has live sandboxes (this suite's forks) and a warm pool.
    const busy = await mitos(["template", "rm", "python"]);
    assert.equal(busy.code, 1, busy.stderr);
    assert.match(busy.stderr, /^error: conflict: template python is in use by /);
    assert.match(busy.stderr, /--force|force=true/);
    const help = await mitos(["template", "rm", "--help"]);
    assert.match(help.stdout, /--force/);
  });

  it("template build --follow prints each step and its output; a failing step exits non-zero naming it", async () => {
    const marker = `f-${Date.now().toString(36)}`;
    const init = ["--init", `echo ${marker}-one`, "--init", "echo two >&2"];
    const built = await mitos([
      "template",
      "build",
      "cli-follow",
      "--image",
      "base",
      "--memory",
      "256",
      ...init,
      "--follow",
    ]);
    assert.equal(built.code, 0, built.stderr);
    assert.equal(built.stdout, "cli-follow\n", "stdout stays the id; the log is on stderr");
    assert.match(built.stderr, new RegExp(`\\[1/2\\] echo ${marker}-one\\n(.|\\n)*${marker}-one\\n`));
    assert.match(built.stderr, /\[2\/2\] echo two >&2\n(.|\n)*two\n/);
    assert.match(built.stderr, /template cli-follow ready \(.*version [0-9a-f]{12}\)/);
    const ls = await mitos(["template", "ls"]);
    assert.match(ls.stdout, /^ID\s+VERSION\s+IMAGE\s+STEPS/);
    assert.match(ls.stdout, /cli-follow\s+[0-9a-f]{12}\s+built-in\s+2\s+yes/);

    const failed = await mitos([
      "template",
      "build",
      "cli-follow-bad",
      "--image",
      "base",
      "--memory",
      "256",
      ...init,
      "--init",
      "echo no-such-thing >&2; exit 3",
      "--follow",
    ]);
    assert.equal(failed.code, 1, failed.stderr);
    assert.match(failed.stderr, /\[1\/3\] echo .*-one {2}\(cached\)/, "steps 1-2 came from the step cache");
    assert.match(failed.stderr, /error: invalid_input: template init step 3 of 3 failed with exit 3/);
    assert.match(failed.stderr, /no-such-thing/);
    await mitos(["template", "rm", "cli-follow"]);
  });

  it("prints listings as JSON that parses", async () => {
    const ls = await mitos(["sandbox", "ls", "--json"]);
    assert.equal(ls.code, 0, ls.stderr);
    const list = JSON.parse(ls.stdout) as Array<{ id: string; parentId: string | null; state: string }>;
    const ids = new Set(list.map((s) => s.id));
    for (const id of [source, ...forks]) assert.ok(ids.has(id), id);
    assert.equal(list.find((s) => s.id === forks[0])?.parentId, source);

    const table = await mitos(["sandbox", "ls"]);
    assert.match(table.stdout, /^ID\s+TEMPLATE\s+PARENT\s+STATE\s+PRIVATE\s+SHARED\s+DEADLINE/);
    assert.match(table.stdout, new RegExp(`${forks[0]}\\s+python\\s+${source}\\s+ready`));

    const tpl = JSON.parse((await mitos(["template", "ls", "--json"])).stdout) as Array<{ id: string; ready: boolean }>;
    assert.ok(tpl.some((t) => t.id === "python" && t.ready));
    const pools = JSON.parse((await mitos(["pool", "ls", "--json"])).stdout) as Array<{ template: string }>;
    assert.ok(Array.isArray(pools));
    const created = await mitos(["sandbox", "create", "--template", "python", "--timeout", "120", "--json"]);
    assert.equal(created.code, 0, created.stderr);
    const sb = JSON.parse(created.stdout) as { id: string; templateId: string };
    assert.equal(sb.templateId, "python");
    const forked = JSON.parse((await mitos(["fork", sb.id, "--json"])).stdout) as Array<{ parentId: string }>;
    assert.equal(forked[0]?.parentId, sb.id);
  });

  it("shows the sandboxes in `mitos top --once`", async () => {
    const r = await mitos(["top", "--once"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^mitos top - /);
    assert.match(r.stdout, /memory: private /);
    assert.match(r.stdout, new RegExp(`${source}\\s+python\\s+-\\s+ready\\s+\\d`));
  });

  it("passes `mitos doctor` against the running server", async () => {
    const r = await mitos(["doctor"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /\[ok {2}\] mitosd: /);
    assert.match(r.stdout, /\[ok {2}\] token: accepted/);
    assert.match(r.stdout, /all checks passed/);
    const bad = await mitos(["doctor", "--api-key", "wrong"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /\[FAIL\] token: /);
  });

  it("runs an interactive shell under a real pseudo-terminal", async () => {
    // python3's pty module gives the CLI a real terminal: raw mode, echo, resize.
    const driver = String.raw`
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
buf = b""
def until(pat, secs):
    global buf
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                d = os.read(fd, 4096)
            except OSError:
                return False
            if not d:
                return False
            buf += d
            if pat in buf:
                return True
    return False
until(b"# ", 30)
os.write(fd, b"echo hi-$((40+2))\r")
saw = until(b"hi-42\r", 30)
os.write(fd, b"exit\r")
while True:
    try:
        d = os.read(fd, 4096)
    except OSError:
        break
    if not d:
        break
    buf += d
_, st = os.waitpid(pid, 0)
sys.stderr.write(repr(buf) + "\n")
print("saw" if saw else "missed", os.waitstatus_to_exitcode(st))
`;
    const out = execFileSync("python3", ["-c", driver, process.execPath, bin, "sandbox", "shell", forks[3] ?? ""], {
      env,
      timeout: 60_000,
      encoding: "utf8",
    });
    assert.equal(out.trim(), "saw 0");
  });

  it("pauses with --hibernate (memory freed, info says so) and resumes with its files", async () => {
    const id = forks[0] as string;
    assert.equal((await mitos(["sandbox", "exec", id, "--", "sh", "-c", "echo nap > /workspace/nap"])).code, 0);
    const p = await mitos(["sandbox", "pause", "--hibernate", id], { timeoutMs: 120_000 });
    assert.equal(p.code, 0, p.stderr);
    assert.equal(p.stdout, `hibernated ${id}\n`);
    const info = JSON.parse((await mitos(["sandbox", "info", id, "--json"])).stdout) as {
      state: string;
      hibernated: boolean;
    };
    assert.equal(info.state, "paused");
    assert.equal(info.hibernated, true);
    const r = await mitos(["sandbox", "resume", id], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await mitos(["sandbox", "exec", id, "--", "cat", "/workspace/nap"])).stdout, "nap\n");
    assert.equal((await mitos(["sandbox", "resume", "sb-00000000"])).code, 3, "an unknown id: not found");
  });

  it("terminates sandboxes", async () => {
    const r = await mitos(["sandbox", "terminate", ...forks]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim().split("\n").length, forks.length);
    const left = JSON.parse((await mitos(["sandbox", "ls", "--json"])).stdout) as Array<{ id: string }>;
    for (const id of forks) assert.ok(!left.some((s) => s.id === id), id);
  });
});
