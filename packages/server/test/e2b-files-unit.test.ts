// Unit tests of envd's /files on mitosd (e2b/files.ts) against an in-memory
// agent: URL signatures (checked against hand-computed SHA-256 vectors),
// uploads (multipart with the filename's directories kept, octet-stream,
// gzip), downloads, and envd's error statuses. No VM.

import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, beforeEach, describe, it } from "node:test";
import zlib from "node:zlib";
import type { SandboxInfo } from "@mitos/engine";
import type { EnvdDeps } from "../src/e2b/envd-context.js";
import { acceptedEncoding, fileSignature, serveFiles, signatureMatches } from "../src/e2b/files.js";
import { FakeFsAgent } from "./fixtures/fake-fs-agent.js";

const TOKEN = "ea_token";

describe("file URL signatures", () => {
  it("match hand-computed vectors (sha256, base64 without padding)", () => {
    // printf '%s' '/home/user/a.txt:read:user:ea_token:1700000000' | openssl dgst -sha256 -binary | base64
    assert.equal(
      fileSignature("/home/user/a.txt", "read", "user", TOKEN, 1_700_000_000),
      "v1_JRDClo7dIexRl3PxT8H0nflOCI9JX6jaYoAJ/DcNY0c",
    );
    // printf '%s' 'dir/b.bin:write::ea_token' | openssl dgst -sha256 -binary | base64
    assert.equal(fileSignature("dir/b.bin", "write", "", TOKEN), "v1_M72RIr3aqEh2xOcREATGGde5262w48oxYSudvwRFiic");
  });

  it("accept the URL the SDK signs, for its method, until it expires", () => {
    const future = Math.floor(Date.now() / 1000) + 60;
    const url = (q: Record<string, string>) => new URL(`http://x/files?${new URLSearchParams(q)}`);
    const read = fileSignature("a.txt", "read", "", TOKEN, future);
    const signed = url({ path: "a.txt", signature: read, signature_expiration: String(future) });
    assert.ok(signatureMatches(signed, "GET", TOKEN));
    assert.ok(!signatureMatches(signed, "POST", TOKEN), "a read signature does not allow a write");
    assert.ok(!signatureMatches(signed, "GET", "other"), "another sandbox's token");
    assert.ok(
      !signatureMatches(url({ path: "b.txt", signature: read, signature_expiration: String(future) }), "GET", TOKEN),
    );
    assert.ok(!signatureMatches(url({ path: "a.txt", signature: read }), "GET", TOKEN), "the expiration is signed");
    const past = future - 3600;
    const old = fileSignature("a.txt", "read", "", TOKEN, past);
    assert.ok(
      !signatureMatches(url({ path: "a.txt", signature: old, signature_expiration: String(past) }), "GET", TOKEN),
    );
    const forever = fileSignature("a.txt", "write", "user", TOKEN);
    assert.ok(signatureMatches(url({ path: "a.txt", username: "user", signature: forever }), "POST", TOKEN));
    assert.ok(!signatureMatches(url({ path: "a.txt", signature: forever }), "POST", TOKEN), "the username is signed");
  });

  it("picks the download encoding as envd does", () => {
    assert.equal(acceptedEncoding(undefined), "identity");
    assert.equal(acceptedEncoding("gzip"), "gzip");
    assert.equal(acceptedEncoding("br, gzip;q=0.5"), "gzip");
    assert.equal(acceptedEncoding("identity, gzip;q=0.5"), "identity");
    assert.equal(acceptedEncoding("gzip;q=0"), "identity");
    assert.equal(acceptedEncoding("br, identity;q=0"), undefined);
    assert.equal(acceptedEncoding("*"), "identity");
  });
});

describe("/files", () => {
  let fs: FakeFsAgent;
  let server: http.Server;
  let base: string;

  before(async () => {
    const deps = {
      engine: { agent: () => fs },
      registry: { record: () => ({ envdAccessToken: TOKEN }) },
    } as unknown as EnvdDeps;
    const sandbox = { id: "sb-1" } as SandboxInfo;
    server = http.createServer((req, res) => {
      void serveFiles(req, res, deps, sandbox, req.headers["x-access-token"] === TOKEN);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/files`;
  });

  after(() => new Promise<void>((r) => server.close(() => r())));

  beforeEach(() => {
    fs = new FakeFsAgent();
    fs.put("/workspace", { type: "dir" });
    fs.put("/etc/passwd", { data: Buffer.from("root:x:0:0::/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\n") });
  });

  const auth = { "x-access-token": TOKEN };

  function form(...files: Array<[string, string]>): FormData {
    const f = new FormData();
    for (const [name, data] of files) f.append("file", new Blob([data]), name);
    return f;
  }

  it("uploads multipart parts to their filenames, directories kept, relative ones under the home", async () => {
    const res = await fetch(base, {
      method: "POST",
      headers: auth,
      body: form(["/tmp/x/a.txt", "A"], ["sub/b.txt", "BB"]),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), [
      { name: "a.txt", type: "file", path: "/tmp/x/a.txt" },
      { name: "b.txt", type: "file", path: "/workspace/sub/b.txt" },
    ]);
    assert.equal(fs.nodes.get("/tmp/x/a.txt")?.data.toString(), "A");
    assert.equal(fs.nodes.get("/workspace/sub/b.txt")?.data.toString(), "BB");
  });

  it("writes a part to the path query when given, as the user named, who owns the file and new parents", async () => {
    const res = await fetch(`${base}?path=~/n/c.txt&username=user`, {
      method: "POST",
      headers: auth,
      body: form(["ignored", "C"]),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), [{ name: "c.txt", type: "file", path: "/home/user/n/c.txt" }]);
    assert.equal(fs.nodes.get("/home/user/n/c.txt")?.uid, 1000);
    assert.equal(fs.nodes.get("/home/user/n")?.gid, 1001);
  });

  it("refuses two parts for the same path with 400", async () => {
    const res = await fetch(base, {
      method: "POST",
      headers: auth,
      body: form(["/tmp/d.txt", "1"], ["/tmp/d.txt", "2"]),
    });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { code: number; message: string };
    assert.equal(body.code, 400);
    assert.match(body.message, /same path/);
  });

  it("takes an octet-stream body, gzipped or not", async () => {
    const plain = await fetch(`${base}?path=/tmp/o.bin`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/octet-stream" },
      body: "raw bytes",
    });
    assert.deepEqual(await plain.json(), [{ name: "o.bin", type: "file", path: "/tmp/o.bin" }]);
    assert.equal(fs.nodes.get("/tmp/o.bin")?.data.toString(), "raw bytes");
    const gz = await fetch(`${base}?path=/tmp/z.bin`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/octet-stream", "content-encoding": "gzip" },
      body: zlib.gzipSync("zipped bytes"),
    });
    assert.equal(gz.status, 200);
    assert.equal(fs.nodes.get("/tmp/z.bin")?.data.toString(), "zipped bytes");
    const bad = await fetch(`${base}?path=/tmp/y.bin`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/octet-stream", "content-encoding": "gzip" },
      body: "not gzip",
    });
    assert.equal(bad.status, 400);
    const noPath = await fetch(base, {
      method: "POST",
      headers: { ...auth, "content-type": "application/octet-stream" },
      body: "x",
    });
    assert.equal(noPath.status, 400);
  });

  it("answers a full guest disk with 507", async () => {
    fs.failWrites = 28;
    // Big enough to arrive in several chunks: the upload stops reading the part early.
    const big = "x".repeat(4 << 20);
    const res = await fetch(base, { method: "POST", headers: auth, body: form(["/tmp/big", big], ["/tmp/next", "n"]) });
    assert.equal(res.status, 507);
    assert.equal(((await res.json()) as { code: number }).code, 507);
    const raw = await fetch(`${base}?path=/tmp/raw`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/octet-stream" },
      body: big,
    });
    assert.equal(raw.status, 507);
  });

  it("downloads a file, plain with its length or gzipped", async () => {
    fs.put("/workspace/r.txt", { data: Buffer.from("hello, file") });
    const res = await fetch(`${base}?path=r.txt`, { headers: { ...auth, "accept-encoding": "identity" } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/octet-stream");
    assert.equal(res.headers.get("content-length"), "11");
    assert.equal(res.headers.get("content-disposition"), 'inline; filename="r.txt"');
    assert.equal(await res.text(), "hello, file");
    const gz = await new Promise<http.IncomingMessage>((resolve) =>
      http.get(`${base}?path=/workspace/r.txt`, { headers: { ...auth, "accept-encoding": "gzip" } }, resolve),
    );
    assert.equal(gz.headers["content-encoding"], "gzip");
    assert.equal(gz.headers.vary, "Accept-Encoding");
    const chunks: Buffer[] = [];
    for await (const c of gz) chunks.push(c as Buffer);
    assert.equal(zlib.gunzipSync(Buffer.concat(chunks)).toString(), "hello, file");
  });

  it("answers a missing path 404, a directory 400, an unknown user 401, as JSON {code, message}", async () => {
    const missing = await fetch(`${base}?path=/nope`, { headers: auth });
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { code: number }).code, 404);
    assert.equal((await fetch(`${base}?path=/workspace`, { headers: auth })).status, 400);
    const who = await fetch(`${base}?path=/etc/passwd&username=nobody`, { headers: auth });
    assert.equal(who.status, 401);
    assert.deepEqual(await who.json(), { code: 401, message: "invalid username" });
  });

  it("takes a signed URL instead of the token, and refuses a wrong token even with a signature", async () => {
    fs.put("/workspace/s.txt", { data: Buffer.from("signed") });
    const sig = fileSignature("s.txt", "read", "", TOKEN);
    assert.equal((await fetch(`${base}?path=s.txt`)).status, 401);
    const ok = await fetch(`${base}?path=s.txt&signature=${encodeURIComponent(sig)}`);
    assert.equal(await ok.text(), "signed");
    const wrong = await fetch(`${base}?path=s.txt&signature=${encodeURIComponent(sig)}`, {
      headers: { "x-access-token": "bad" },
    });
    assert.equal(wrong.status, 401);
    assert.equal(((await wrong.json()) as { code: number }).code, 401);
    const upload = fileSignature("/tmp/u.txt", "write", "", TOKEN);
    const up = await fetch(`${base}?path=/tmp/u.txt&signature=${encodeURIComponent(upload)}`, {
      method: "POST",
      body: form(["u", "U"]),
    });
    assert.equal(up.status, 200);
    assert.equal(fs.nodes.get("/tmp/u.txt")?.data.toString(), "U");
  });
});
