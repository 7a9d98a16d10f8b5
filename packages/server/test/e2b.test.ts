// The E2B front door end to end (docs/e2b.md): the unmodified `e2b` npm SDK
// and `@e2b/code-interpreter`, pointed at a real mitosd by the three
// environment variables E2B users set, drive real python sandboxes: commands,
// files, PTY, lifecycle, fork, pause and connect, and runCode.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { Sandbox as CodeSandbox } from "@e2b/code-interpreter";
import { CommandExitError, FileType, NotFoundError, Sandbox, TimeoutError } from "e2b";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";
import { until } from "../../../test-support/until.js";

const dataDir = tempDataDir("test-e2b");
let daemon: Daemon;
let sbx: Sandbox;
let apiKey: string;

/** The sandbox's envd access token, which the SDK keeps to itself (protected). */
function envdToken(s: Sandbox): string {
  return (s as unknown as { envdAccessToken: string }).envdAccessToken;
}

/** The guest's process command lines (from /proc: the images have no ps). */
async function procs(s: Sandbox): Promise<string[]> {
  const r = await s.commands.run(
    "for p in /proc/[0-9]*; do [ -r $p/cmdline ] && tr '\\0' ' ' < $p/cmdline && echo; done; true",
  );
  return r.stdout
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
}

before(async () => {
  daemon = await startMitosd(dataDir);
  const res = await fetch(`${daemon.url}/v1/e2b/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${daemon.token}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "e2b test" }),
  });
  assert.equal(res.status, 201);
  apiKey = ((await res.json()) as { key: string }).key;
  // What a user of E2B sets to switch (docs/e2b.md).
  process.env.E2B_API_URL = daemon.url;
  process.env.E2B_SANDBOX_URL = daemon.url;
  process.env.E2B_API_KEY = apiKey;
  sbx = await Sandbox.create("python");
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

describe("e2b SDK: keys and ids", () => {
  it("gives an E2B-shaped key and sandbox id, and refuses a wrong key", async () => {
    assert.match(apiKey, /^e2b_[0-9a-f]+$/);
    assert.match(sbx.sandboxId, /^[a-z0-9]+$/);
    await assert.rejects(Sandbox.create("python", { apiKey: "e2b_00" }), /401|[Aa]uthentication|API key/);
    // The admin token is not an E2B key, and an E2B key is not the admin token.
    const admin = await fetch(`${daemon.url}/v1/sandboxes`, { headers: { authorization: `Bearer ${apiKey}` } });
    assert.equal(admin.status, 401);
  });
});

describe("e2b SDK: commands", () => {
  it("runs a command: stdout and exit code 0", async () => {
    const r = await sbx.commands.run("echo hi; echo err >&2");
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "hi\n");
    assert.equal(r.stderr, "err\n");
  });

  it("throws CommandExitError with the exit code and output", async () => {
    await assert.rejects(sbx.commands.run("echo out; echo bad >&2; exit 3"), (e: unknown) => {
      assert.ok(e instanceof CommandExitError, String(e));
      assert.equal(e.exitCode, 3);
      assert.equal(e.stdout, "out\n");
      assert.equal(e.stderr, "bad\n");
      return true;
    });
  });

  it("passes env and cwd, and runs bash -l -c", async () => {
    const r = await sbx.commands.run('echo "$FOO $0" && pwd', { envs: { FOO: "bar" }, cwd: "/tmp" });
    assert.equal(r.stdout, "bar /bin/bash\n/tmp\n");
    const home = await sbx.commands.run("pwd");
    assert.equal(home.stdout, "/workspace\n");
  });

  it("kills a command at its timeout (TimeoutError) and leaves no process behind", async () => {
    const t0 = Date.now();
    await assert.rejects(sbx.commands.run("sleep 300; echo never", { timeoutMs: 2000 }), (e: unknown) => {
      assert.ok(e instanceof TimeoutError, String(e));
      return true;
    });
    assert.ok(Date.now() - t0 < 60_000);
    await until("the sleep to be gone", async () => !(await procs(sbx)).includes("sleep 300"));
  });

  it("background + sendStdin + list + connect + kill", async () => {
    let out = "";
    const h = await sbx.commands.run("cat", {
      background: true,
      stdin: true,
      onStdout: (d) => {
        out += d;
      },
    });
    assert.ok(h.pid > 0);
    await sbx.commands.sendStdin(h.pid, "hello\n");
    await until("cat to echo stdin", () => out === "hello\n");
    const listed = await sbx.commands.list();
    const mine = listed.find((p) => p.pid === h.pid);
    assert.ok(mine, `pid ${h.pid} in ${JSON.stringify(listed)}`);
    assert.equal(mine.cmd, "/bin/bash");
    assert.deepEqual(mine.args, ["-l", "-c", "cat"]);
    // A second client re-attaches to the running process's output.
    let seen = "";
    const again = await sbx.commands.connect(h.pid, {
      onStdout: (d) => {
        seen += d;
      },
    });
    await sbx.commands.sendStdin(h.pid, "again\n");
    await until("the connected handle to see output", () => seen.includes("again\n"));
    assert.equal(await sbx.commands.kill(h.pid), true);
    await assert.rejects(h.wait(), CommandExitError);
    await assert.rejects(again.wait(), CommandExitError);
    assert.equal(
      (await sbx.commands.list()).find((p) => p.pid === h.pid),
      undefined,
    );
    assert.equal(await sbx.commands.kill(h.pid), false, "an exited pid is not found");
  });

  it("a background process outlives its client's stream, and closeStdin ends cat", async () => {
    const h = await sbx.commands.run("cat > /tmp/cat-out; echo done", { background: true, stdin: true });
    await h.disconnect();
    await sbx.commands.sendStdin(h.pid, "kept\n");
    await sbx.commands.closeStdin(h.pid);
    await until("cat to finish", async () => (await sbx.commands.list()).every((p) => p.pid !== h.pid));
    assert.equal(await sbx.files.read("/tmp/cat-out"), "kept\n");
  });
});

describe("e2b SDK: files", () => {
  it("write, read, exists, getInfo, list, makeDir, rename, remove", async () => {
    const info = await sbx.files.write("/workspace/e2b/a.txt", "alpha");
    assert.equal(info.path, "/workspace/e2b/a.txt");
    assert.equal(await sbx.files.read("/workspace/e2b/a.txt"), "alpha");
    const bytes = await sbx.files.read("/workspace/e2b/a.txt", { format: "bytes" });
    assert.deepEqual([...bytes], [...Buffer.from("alpha")]);
    assert.equal(await sbx.files.exists("/workspace/e2b/a.txt"), true);
    assert.equal(await sbx.files.exists("/workspace/e2b/none"), false);
    const st = await sbx.files.getInfo("/workspace/e2b/a.txt");
    assert.equal(st.type, FileType.FILE);
    assert.equal(st.size, 5);
    assert.equal(await sbx.files.makeDir("/workspace/e2b/sub/deep"), true);
    assert.equal(await sbx.files.makeDir("/workspace/e2b/sub/deep"), false, "an existing dir");
    const entries = await sbx.files.list("/workspace/e2b");
    assert.deepEqual(entries.map((e) => `${e.name}:${e.type}`).sort(), ["a.txt:file", "sub:dir"]);
    const deep = await sbx.files.list("/workspace/e2b", { depth: 2 });
    assert.ok(deep.some((e) => e.path === "/workspace/e2b/sub/deep"));
    const moved = await sbx.files.rename("/workspace/e2b/a.txt", "/workspace/e2b/b.txt");
    assert.equal(moved.path, "/workspace/e2b/b.txt");
    assert.equal(await sbx.files.exists("/workspace/e2b/a.txt"), false);
    await sbx.files.remove("/workspace/e2b");
    assert.equal(await sbx.files.exists("/workspace/e2b"), false);
    await assert.rejects(sbx.files.read("/workspace/e2b/b.txt"), NotFoundError);
  });

  it("writes several files in one request, relative paths under the home, and a stream", async () => {
    await sbx.files.write([
      { path: "/tmp/multi/one.txt", data: "1" },
      { path: "rel/two.txt", data: new Blob(["2"]) },
    ]);
    assert.equal(await sbx.files.read("/tmp/multi/one.txt"), "1");
    assert.equal(await sbx.files.read("/workspace/rel/two.txt"), "2");
    const big = Buffer.alloc(3 << 20, 7);
    await sbx.files.write("/tmp/big.bin", new Blob([big]).stream());
    const back = await sbx.files.read("/tmp/big.bin", { format: "bytes" });
    assert.equal(back.length, big.length);
    assert.ok(Buffer.from(back).equals(big));
  });

  it("watchDir reports a created file", async () => {
    await sbx.files.makeDir("/tmp/watched");
    const events: string[] = [];
    const w = await sbx.files.watchDir("/tmp/watched", (e) => void events.push(`${e.type}:${e.name}`));
    await sbx.files.write("/tmp/watched/new.txt", "x");
    await until("a create event", () => events.some((e) => e.endsWith(":new.txt") && e.startsWith("create")));
    await w.stop();
  });

  it("signed URLs upload and download without a token header", async () => {
    const up = await sbx.uploadUrl("/tmp/signed.txt");
    const form = new FormData();
    form.append("file", new Blob(["signed!"]), "/tmp/signed.txt");
    assert.equal((await fetch(up, { method: "POST", body: form })).status, 200);
    const down = await sbx.downloadUrl("/tmp/signed.txt");
    const res = await fetch(down);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "signed!");
    const forged = down.replace(/signature=v1_[^&]+/, "signature=v1_AAAA");
    assert.notEqual((await fetch(forged)).status, 200);
  });
});

describe("e2b SDK: pty", () => {
  it("create, input, resize", async () => {
    let out = "";
    const dec = new TextDecoder();
    const h = await sbx.pty.create({
      cols: 80,
      rows: 24,
      onData: (d) => {
        out += dec.decode(d);
      },
    });
    await sbx.pty.sendInput(h.pid, new TextEncoder().encode("echo $((6*7))\n"));
    await until("the shell to answer", () => out.includes("42"));
    await sbx.pty.resize(h.pid, { cols: 100, rows: 30 });
    await sbx.pty.sendInput(h.pid, new TextEncoder().encode("stty size\n"));
    await until("the new size", () => out.includes("30 100"));
    await sbx.pty.kill(h.pid);
  });
});

describe("e2b SDK: lifecycle", () => {
  it("getInfo, setTimeout, list, isRunning", async () => {
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, "python");
    assert.equal(info.state, "running");
    await sbx.setTimeout(600_000);
    const later = await sbx.getInfo();
    assert.ok(later.endAt.getTime() - Date.now() > 500_000, `endAt ${later.endAt.toISOString()}`);
    const page = await Sandbox.list().nextItems();
    assert.ok(page.some((s) => s.sandboxId === sbx.sandboxId));
    assert.equal(await sbx.isRunning(), true);
  });

  it("lists page by page with X-Next-Token", async () => {
    const extra = await Sandbox.create("base");
    const seen: string[] = [];
    const pages = Sandbox.list({ limit: 1 });
    while (pages.hasNext) seen.push(...(await pages.nextItems()).map((s) => s.sandboxId));
    assert.ok(seen.length >= 2, seen.join(","));
    assert.equal(new Set(seen).size, seen.length, "no sandbox twice");
    assert.ok(seen.includes(extra.sandboxId) && seen.includes(sbx.sandboxId));
    await extra.kill();
  });

  it("getHost(port) reaches a server in the sandbox with the traffic token, and only with it", async () => {
    await sbx.commands.run("cd /tmp && python3 -m http.server 8000 >/dev/null 2>&1", { background: true });
    const host = sbx.getHost(8000);
    assert.equal(host, `8000-${sbx.sandboxId}.localhost:${new URL(daemon.url).port}`);
    // Node cannot resolve *.localhost: connect to mitosd and send the Host getHost gave.
    const get = (headers: Record<string, string>) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request(
          { host: "127.0.0.1", port: new URL(daemon.url).port, path: "/", headers: { host, ...headers } },
          (res) => {
            let body = "";
            res.on("data", (d: Buffer) => {
              body += d.toString();
            });
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
          },
        );
        req.on("error", reject);
        req.end();
      });
    const token = sbx.trafficAccessToken as string;
    assert.ok(token);
    await until("the server to listen", async () => (await get({ "e2b-traffic-access-token": token })).status === 200);
    assert.match((await get({ "e2b-traffic-access-token": token })).body, /Directory listing/);
    assert.equal((await get({})).status, 401);
    assert.equal((await get({ "e2b-traffic-access-token": "ta_wrong" })).status, 401);
  });

  it("sends keepalive events at the interval the client asks for", async () => {
    const msg = Buffer.from(JSON.stringify({ process: { cmd: "/bin/bash", args: ["-c", "sleep 2.5"] }, stdin: false }));
    const head = Buffer.alloc(5);
    head.writeUInt32BE(msg.length, 1);
    const res = await fetch(`${daemon.url}/process.Process/Start`, {
      method: "POST",
      headers: {
        "e2b-sandbox-id": sbx.sandboxId,
        "e2b-sandbox-port": "49983",
        "x-access-token": envdToken(sbx),
        "content-type": "application/connect+json",
        "connect-protocol-version": "1",
        "keepalive-ping-interval": "1",
      },
      body: Buffer.concat([head, msg]),
    });
    assert.equal(res.status, 200);
    const text = Buffer.from(await res.arrayBuffer()).toString("latin1");
    const keepalives = text.split('"keepalive"').length - 1;
    assert.ok(keepalives >= 1, `keepalives in ${text}`);
    assert.match(text, /"end"/);
  });

  it("fork({count: 3}): children see the parent's files and processes, then diverge", async () => {
    await sbx.files.write("/workspace/state.txt", "parent");
    const bg = await sbx.commands.run("sleep 1000", { background: true });
    const kids = await sbx.fork({ count: 3 });
    assert.equal(kids.length, 3);
    const children = kids.map((k) => {
      assert.ok(k instanceof Sandbox, String(k));
      return k;
    });
    assert.equal(new Set(children.map((c) => c.sandboxId)).size, 3);
    // Each child has its own access token: the parent's holder cannot drive the children.
    const tokens = new Set([sbx, ...children].map(envdToken));
    assert.equal(tokens.size, 4);
    for (const [i, c] of children.entries()) {
      assert.equal(await c.files.read("/workspace/state.txt"), "parent");
      assert.ok((await procs(c)).includes("sleep 1000"), "the parent's process runs in the child");
      await c.files.write("/workspace/state.txt", `child ${i}`);
    }
    for (const [i, c] of children.entries()) assert.equal(await c.files.read("/workspace/state.txt"), `child ${i}`);
    assert.equal(await sbx.files.read("/workspace/state.txt"), "parent");
    await sbx.commands.kill(bg.pid);
    for (const c of children) assert.equal(await c.kill(), true);
  });

  it("pause, then connect resumes with files and processes kept", async () => {
    const other = await Sandbox.create("base");
    await other.files.write("/workspace/kept.txt", "kept");
    await other.commands.run("sleep 1000", { background: true });
    assert.equal(await other.pause(), true);
    assert.equal((await other.getInfo()).state, "paused");
    assert.equal(await other.isRunning(), false);
    assert.equal(await other.pause(), false, "already paused: 409");
    const back = await Sandbox.connect(other.sandboxId);
    assert.equal(await back.files.read("/workspace/kept.txt"), "kept");
    assert.ok((await procs(back)).includes("sleep 1000"), "its process survived the pause");
    assert.equal(await back.kill(), true);
  });

  it("kill, then the 404 paths", async () => {
    const doomed = await Sandbox.create("base");
    assert.equal(await doomed.kill(), true);
    assert.equal(await doomed.kill(), false);
    assert.equal(await Sandbox.kill(doomed.sandboxId), false);
    await assert.rejects(Sandbox.connect(doomed.sandboxId), NotFoundError);
    await assert.rejects(Sandbox.getInfo(doomed.sandboxId), NotFoundError);
    await assert.rejects(doomed.setTimeout(10_000), NotFoundError);
    assert.equal(await doomed.isRunning(), false);
    await assert.rejects(doomed.commands.run("true"));
  });
});

describe("@e2b/code-interpreter", () => {
  it("runCode('x = 41') then runCode('x + 1') is 42", async () => {
    // E2B's default code-interpreter template (code-interpreter-v1) is the python template here.
    const ci = await CodeSandbox.create();
    assert.equal((await ci.getInfo()).templateId, "code-interpreter-v1");
    await ci.runCode("x = 41");
    const r = await ci.runCode("x + 1");
    assert.equal(r.text, "42");
    const out: string[] = [];
    const p = await ci.runCode("print('streamed')", { onStdout: (m) => void out.push(m.line) });
    assert.deepEqual(p.logs.stdout, ["streamed\n"]);
    assert.deepEqual(out, ["streamed\n"]);
    const err = await ci.runCode("1/0");
    assert.equal(err.error?.name, "ZeroDivisionError");
    await ci.kill();
  });
});
