// envd's filesystem.Filesystem service (e2b/envd-filesystem.ts) over the
// Connect protocol in JSON, as the E2B SDKs speak it, against an in-memory
// agent: envd's results and error codes for each RPC, the WatchDir stream
// (start first, events, keepalives) and the polling watcher. No VM.

import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, beforeEach, describe, it } from "node:test";
import { Code, type ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import { envdFilesystem as pb } from "@mitos/proto/envd";
import { type EnvdDeps, SANDBOX_HEADER } from "../src/e2b/envd-context.js";
import { registerFilesystem } from "../src/e2b/envd-filesystem.js";
import { FakeFsAgent } from "./fixtures/fake-fs-agent.js";

let fs: FakeFsAgent;
let server: http.Server;
let client: ReturnType<typeof createClient<typeof pb.Filesystem>>;
const asUser = { headers: { authorization: `Basic ${Buffer.from("user:").toString("base64")}` } };
const code = (c: Code) => (e: ConnectError) => e.code === c;

before(async () => {
  const deps = { engine: { agent: () => fs }, registry: {} } as unknown as EnvdDeps;
  const envd = connectNodeAdapter({
    routes: (r) => registerFilesystem(r, deps),
    jsonOptions: { ignoreUnknownFields: true },
  });
  server = http.createServer((req, res) => {
    req.headers[SANDBOX_HEADER] = "sb-1"; // what the sandbox plane sets
    envd(req, res);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  client = createClient(pb.Filesystem, createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }));
});

after(() => {
  server.closeAllConnections();
  server.close();
});

beforeEach(() => {
  fs = new FakeFsAgent();
  fs.put("/workspace", { type: "dir" });
  fs.put("/workspace/a.txt", { data: Buffer.from("aaa"), uid: 1000 });
  fs.put("/workspace/ln", { type: "symlink", target: "a.txt", mode: 0o777 });
  fs.put("/home/user", { type: "dir", uid: 1000, gid: 1000 });
  fs.put("/etc/passwd", { data: Buffer.from("root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n") });
  fs.put("/etc/group", { data: Buffer.from("root:x:0:\nusers:x:1000:\n") });
});

describe("filesystem RPCs", () => {
  it("Stat reports an entry as envd does, a symlink as itself", async () => {
    const a = (await client.stat({ path: "a.txt" })).entry;
    assert.equal(a?.path, "/workspace/a.txt");
    assert.equal(a?.type, pb.FileType.FILE);
    assert.equal(a?.size, 3n);
    assert.equal(a?.permissions, "-rw-r--r--");
    assert.equal(a?.owner, "user");
    assert.equal(a?.group, "root");
    const ln = (await client.stat({ path: "/workspace/ln" })).entry;
    assert.equal(ln?.type, pb.FileType.SYMLINK);
    assert.equal(ln?.symlinkTarget, "/workspace/a.txt");
    await assert.rejects(client.stat({ path: "nope" }), code(Code.NotFound));
  });

  it("MakeDir creates parents owned by the caller; an existing path is already_exists or invalid_argument", async () => {
    const r = await client.makeDir({ path: "~/x/y" }, asUser);
    assert.equal(r.entry?.path, "/home/user/x/y");
    assert.equal(r.entry?.type, pb.FileType.DIRECTORY);
    assert.equal(fs.nodes.get("/home/user/x")?.uid, 1000);
    await assert.rejects(client.makeDir({ path: "/home/user/x" }), code(Code.AlreadyExists));
    await assert.rejects(client.makeDir({ path: "/workspace/a.txt" }), code(Code.InvalidArgument));
  });

  it("Move creates the destination's parents and returns the moved entry", async () => {
    const r = await client.move({ source: "a.txt", destination: "d/m/b.txt" });
    assert.equal(r.entry?.path, "/workspace/d/m/b.txt");
    assert.equal(r.entry?.size, 3n);
    await assert.rejects(client.move({ source: "gone", destination: "x" }), code(Code.NotFound));
  });

  it("ListDir lists to the depth asked (0 is 1), paths absolute, sorted as envd walks", async () => {
    fs.put("/workspace/d/e/f.txt");
    const names = async (depth: number) =>
      (await client.listDir({ path: "/workspace", depth })).entries.map((e) => e.path);
    assert.deepEqual(await names(0), ["/workspace/a.txt", "/workspace/d", "/workspace/ln"]);
    assert.deepEqual(await names(3), [
      "/workspace/a.txt",
      "/workspace/d",
      "/workspace/d/e",
      "/workspace/d/e/f.txt",
      "/workspace/ln",
    ]);
    await assert.rejects(client.listDir({ path: "/nope" }), code(Code.NotFound));
    await assert.rejects(client.listDir({ path: "/workspace/a.txt" }), code(Code.InvalidArgument));
  });

  it("Remove deletes recursively, and a missing path is fine (envd's os.RemoveAll)", async () => {
    fs.put("/workspace/t/u/v.txt");
    await client.remove({ path: "t" });
    assert.ok(![...fs.nodes.keys()].some((k) => k.startsWith("/workspace/t")));
    await client.remove({ path: "never-was" });
  });

  it("refuses a user the guest does not have", async () => {
    const nobody = { headers: { authorization: `Basic ${Buffer.from("nobody:").toString("base64")}` } };
    await assert.rejects(client.stat({ path: "/" }, nobody), code(Code.Unauthenticated));
  });
});

describe("watching", () => {
  it("WatchDir sends start first, then events with entries, and keepalives when idle", async () => {
    const ac = new AbortController();
    const stream = client.watchDir(
      { path: "/workspace", recursive: true, includeEntry: true },
      { signal: ac.signal, headers: { "keepalive-ping-interval": "1" } },
    );
    const got: string[] = [];
    setTimeout(() => fs.put("/workspace/n/new.txt", { data: Buffer.from("n") }), 300);
    for await (const m of stream) {
      const ev = m.event;
      got.push(
        ev.case === "filesystem"
          ? `${pb.EventType[ev.value.type]} ${ev.value.name} ${ev.value.entry?.path}`
          : `${ev.case}`,
      );
      if (ev.case === "keepalive") break;
    }
    ac.abort();
    assert.deepEqual(got, [
      "start",
      "CREATE n /workspace/n",
      "CREATE n/new.txt /workspace/n/new.txt",
      "WRITE n/new.txt /workspace/n/new.txt",
      "keepalive",
    ]);
  });

  it("WatchDir of a missing path or a file ends with not_found or invalid_argument", async () => {
    const first = async (path: string) => {
      for await (const _ of client.watchDir({ path })) break;
    };
    await assert.rejects(first("/nope"), code(Code.NotFound));
    await assert.rejects(first("/workspace/a.txt"), code(Code.InvalidArgument));
  });

  it("the polling watcher buffers events until collected; an unknown id is not_found", async () => {
    const { watcherId } = await client.createWatcher({ path: "/workspace" });
    assert.match(watcherId, /^w[0-9a-f]+$/);
    fs.put("/workspace/w.txt");
    await new Promise((r) => setTimeout(r, 500));
    const events = (await client.getWatcherEvents({ watcherId })).events;
    assert.deepEqual(
      events.map((e) => `${pb.EventType[e.type]} ${e.name}`),
      ["CREATE w.txt"],
    );
    assert.equal(events[0]?.entry, undefined, "no entry unless asked");
    assert.deepEqual((await client.getWatcherEvents({ watcherId })).events, [], "collected events are gone");
    await client.removeWatcher({ watcherId });
    await assert.rejects(client.getWatcherEvents({ watcherId }), code(Code.NotFound));
    await assert.rejects(client.removeWatcher({ watcherId: "wnope" }), code(Code.NotFound));
  });
});
