// E2B's Python SDK cannot be installed here (no PyPI), so its requests are
// replayed from fixtures/e2b-python-sdk.json against a real mitosd and real
// VMs: each answer must have the exact status and the keys the SDK's
// response parsers require, in the types they parse (docs/e2b.md).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { removeDataDir, tempDataDir } from "../../../test-support/data-dir.js";
import { type Daemon, startMitosd } from "../../../test-support/mitosd.js";

interface Exchange {
  name: string;
  request: {
    method: string;
    path: string;
    headers?: Record<string, string>;
    body?: unknown;
    /** A Connect server-stream request message (one envelope). */
    stream?: unknown;
    /** A multipart/form-data body, as httpx sends files. */
    multipart?: Array<{ name: string; filename: string; data: string }>;
    /** Repeat the request until the expectation holds or this many ms pass (a poll). */
    pollMs?: number;
  };
  expect: {
    status: number;
    required?: Record<string, string>;
    listRequired?: Record<string, string>;
    listContains?: string;
    equals?: Record<string, unknown>;
    capture?: string[];
    error?: boolean;
    forkItems?: number;
    contentType?: string;
    events?: string[];
    stdout?: string;
    text?: string;
    eventNamed?: string;
    connectError?: string;
  };
}

const fixture = JSON.parse(readFileSync(path.join(import.meta.dirname, "fixtures/e2b-python-sdk.json"), "utf8")) as {
  exchanges: Exchange[];
};
const dataDir = tempDataDir("test-e2b-python");
let daemon: Daemon;
const vars: Record<string, string> = {};

before(async () => {
  daemon = await startMitosd(dataDir);
  const res = await fetch(`${daemon.url}/v1/e2b/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${daemon.token}`, "content-type": "application/json" },
    body: "{}",
  });
  vars.apiKey = ((await res.json()) as { key: string }).key;
});

after(async () => {
  await daemon?.stop();
  removeDataDir(dataDir);
});

const fill = (s: string) => s.replace(/\{(\w+)\}/g, (_, k: string) => vars[k] ?? `{${k}}`);
const fillDeep = (v: unknown): unknown =>
  typeof v === "string"
    ? fill(v)
    : Array.isArray(v)
      ? v.map(fillDeep)
      : v && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fillDeep(x)]))
        : v;

/** The types the SDK's generated models parse (attrs + dateutil + packaging). */
function checkType(where: string, v: unknown, t: string): void {
  const ok =
    t === "string"
      ? typeof v === "string"
      : t === "integer"
        ? Number.isInteger(v)
        : t === "number"
          ? typeof v === "number"
          : t === "array"
            ? Array.isArray(v)
            : t === "datetime"
              ? typeof v === "string" && !Number.isNaN(Date.parse(v)) && /^\d{4}-\d\d-\d\dT/.test(v)
              : t === "state"
                ? v === "running" || v === "paused"
                : false;
  assert.ok(ok, `${where}: ${JSON.stringify(v)} is not a ${t}`);
}

function checkRequired(where: string, obj: Record<string, unknown>, req: Record<string, string>): void {
  for (const [k, t] of Object.entries(req)) {
    assert.ok(k in obj, `${where}: required key ${k} missing in ${JSON.stringify(obj)}`);
    checkType(`${where}.${k}`, obj[k], t);
  }
  if (typeof obj.envdVersion === "string") assert.match(obj.envdVersion, /^\d+\.\d+\.\d+$/, "semver and PEP 440");
}

/** Splits a Connect stream body into its envelopes' JSON (flag byte, 4-byte length, payload). */
function envelopes(buf: Buffer): Array<{ flags: number; json: Record<string, unknown> }> {
  const out: Array<{ flags: number; json: Record<string, unknown> }> = [];
  for (let off = 0; off + 5 <= buf.length; ) {
    const flags = buf[off] as number;
    const len = buf.readUInt32BE(off + 1);
    out.push({ flags, json: JSON.parse(buf.subarray(off + 5, off + 5 + len).toString("utf8")) });
    off += 5 + len;
  }
  return out;
}

describe("E2B Python SDK 2.45.1 requests, replayed", () => {
  for (const x of fixture.exchanges) {
    it(x.name, async () => {
      const send = async () => {
        const headers = fillDeep(x.request.headers ?? {}) as Record<string, string>;
        let body: string | Buffer | FormData | undefined;
        if (x.request.stream !== undefined) {
          const msg = Buffer.from(JSON.stringify(fillDeep(x.request.stream)));
          const head = Buffer.alloc(5);
          head.writeUInt32BE(msg.length, 1);
          body = Buffer.concat([head, msg]);
        } else if (x.request.multipart !== undefined) {
          const form = new FormData();
          for (const part of x.request.multipart) form.append(part.name, new Blob([part.data]), part.filename);
          body = form;
        } else if (x.request.body !== undefined) {
          body = JSON.stringify(fillDeep(x.request.body));
          headers["Content-Type"] ??= "application/json";
        }
        const res = await fetch(`${daemon.url}${fill(x.request.path)}`, { method: x.request.method, headers, body });
        return { res, raw: Buffer.from(await res.arrayBuffer()) };
      };
      let { res, raw } = await send();
      const events: Array<{ name?: string }> = [];
      const collect = () => {
        if (res.status === 200 && x.expect.eventNamed) {
          events.push(...((JSON.parse(raw.toString("utf8")) as { events?: Array<{ name?: string }> }).events ?? []));
        }
      };
      collect();
      const until = Date.now() + (x.request.pollMs ?? 0);
      while (x.expect.eventNamed && !events.some((ev) => ev.name === x.expect.eventNamed) && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 200));
        ({ res, raw } = await send());
        collect();
      }
      assert.equal(res.status, x.expect.status, `${x.name}: ${raw.toString("utf8").slice(0, 500)}`);
      const e = x.expect;
      if (e.contentType) assert.equal(res.headers.get("content-type"), e.contentType);
      if (e.events) {
        const env = envelopes(raw);
        const last = env.pop();
        assert.equal(last?.flags, 2, "end-of-stream envelope last");
        assert.deepEqual(last?.json, {}, "the stream ended without an error");
        const kinds = env.map((m) => Object.keys((m.json.event ?? {}) as object)[0]);
        assert.equal(kinds[0], "start", "start first");
        assert.equal(kinds[kinds.length - 1], "end", "end last");
        for (const k of e.events) assert.ok(kinds.includes(k), `${k} in ${kinds.join(",")}`);
        const stdout = env
          .map((m) => (m.json.event as { data?: { stdout?: string } }).data?.stdout ?? "")
          .map((b64) => Buffer.from(b64, "base64").toString("utf8"))
          .join("");
        if (e.stdout !== undefined) assert.equal(stdout, e.stdout);
        return;
      }
      if (e.text !== undefined) {
        assert.equal(raw.toString("utf8"), e.text);
        return;
      }
      if (e.eventNamed)
        assert.ok(
          events.some((ev) => ev.name === e.eventNamed),
          JSON.stringify(events),
        );
      if (e.connectError) {
        assert.equal((JSON.parse(raw.toString("utf8")) as { code?: string }).code, e.connectError);
        return;
      }
      if (raw.length === 0) {
        assert.ok(!e.required && !e.listRequired && !e.error, "a body was expected");
        return;
      }
      const json = JSON.parse(raw.toString("utf8")) as Record<string, unknown> | Array<Record<string, unknown>>;
      if (e.error) {
        const err = json as Record<string, unknown>;
        assert.equal(err.code, e.status, "the body's code is the HTTP status, an integer");
        assert.equal(typeof err.message, "string");
      }
      if (e.required) checkRequired(x.name, json as Record<string, unknown>, e.required);
      if (e.equals)
        for (const [k, v] of Object.entries(e.equals)) assert.deepEqual((json as Record<string, unknown>)[k], v);
      if (e.listRequired) {
        assert.ok(Array.isArray(json), "a JSON array");
        assert.ok(json.length > 0, "not empty");
        for (const item of json) checkRequired(x.name, item, e.listRequired);
        if (e.listContains) assert.ok(json.some((i) => i.sandboxID === fill(e.listContains as string)));
      }
      if (e.forkItems !== undefined) {
        assert.ok(Array.isArray(json));
        assert.equal(json.length, e.forkItems);
        for (const item of json) {
          const sb = item.sandbox as Record<string, unknown>;
          assert.ok(sb, `a sandbox, not ${JSON.stringify(item)}`);
          checkRequired(x.name, sb, {
            sandboxID: "string",
            templateID: "string",
            clientID: "string",
            envdVersion: "string",
          });
          await fetch(`${daemon.url}/sandboxes/${sb.sandboxID}`, {
            method: "DELETE",
            headers: { "X-API-KEY": vars.apiKey as string },
          });
        }
      }
      for (const k of e.capture ?? []) vars[k] = String((json as Record<string, unknown>)[k]);
    });
  }
});
