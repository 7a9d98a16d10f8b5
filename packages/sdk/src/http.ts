// The lifecycle API client (JSON over fetch). Every request carries the bearer
// token; creating POSTs carry an Idempotency-Key that stays the same across
// this client's own retries, so a retried fork never makes a second sandbox.

import { randomUUID } from "node:crypto";
import type { ResolvedConfig } from "./config.js";
import { errorFromEnvelope, type MitosError, makeError, networkError } from "./errors.js";
import type { Json } from "./wire.js";

export const USER_AGENT = "mitos-sdk-ts/0.1.0";

export interface RequestOptions {
  /** A creating call: send an Idempotency-Key (reused on retries). */
  create?: boolean;
  /** Use this key instead of a fresh one. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

type Method = "GET" | "POST" | "PUT" | "DELETE";

const RETRY_BASE_MS = 200;
const RETRY_AFTER_CAP_MS = 5_000;

export class LifecycleClient {
  constructor(readonly config: ResolvedConfig) {}

  get<T = unknown>(path: string, opts: RequestOptions = {}): Promise<T> {
    return this.request("GET", path, undefined, opts) as Promise<T>;
  }

  post(path: string, body: Record<string, Json>, opts: RequestOptions = {}): Promise<unknown> {
    return this.request("POST", path, body, opts);
  }

  put(path: string, body: Record<string, Json>, opts: RequestOptions = {}): Promise<unknown> {
    return this.request("PUT", path, body, opts);
  }

  delete(path: string, opts: RequestOptions = {}): Promise<unknown> {
    return this.request("DELETE", path, undefined, opts);
  }

  /** What every call sends: what it accepts, who asks, the bearer token and, with a body, its type. */
  headers(accept: string, withBody: boolean): Record<string, string> {
    const headers: Record<string, string> = { accept, "user-agent": USER_AGENT };
    if (this.config.apiKey) headers.authorization = `Bearer ${this.config.apiKey}`;
    if (withBody) headers["content-type"] = "application/json";
    return headers;
  }

  async request(method: Method, path: string, body: Record<string, Json> | undefined, opts: RequestOptions = {}) {
    const url = `${this.config.baseUrl}${path}`;
    const headers = this.headers("application/json", body !== undefined);
    const key = opts.idempotencyKey ?? (opts.create ? randomUUID() : undefined);
    if (key) headers["idempotency-key"] = key;
    const payload = body === undefined ? undefined : JSON.stringify(body);

    for (let attempt = 0; ; attempt++) {
      const last = attempt >= this.config.maxRetries;
      let res: Response;
      try {
        res = await fetch(url, { method, headers, body: payload, signal: opts.signal });
      } catch (err) {
        if (opts.signal?.aborted) throw makeError({ code: "canceled", message: `${method} ${path} was canceled` });
        // A refused connection never reached the server: safe to retry any
        // call. Other failures may have reached it: only reads and keyed calls.
        const safe = isRefused(err) || method === "GET" || method === "PUT" || key !== undefined;
        if (last || !safe) throw networkError(this.config.baseUrl, err);
        await sleep(backoff(attempt), opts.signal);
        continue;
      }
      if (res.ok) return parseBody(res);
      const error = errorFromEnvelope(res.status, await parseBody(res));
      if (!last && retryable(error, attempt, key)) {
        await sleep(retryAfterMs(res) ?? backoff(attempt), opts.signal);
        continue;
      }
      throw error;
    }
  }
}

/**
 * A POST whose answer is streamed as JSON lines (`application/x-ndjson`):
 * each line is handed to `onLine` as it arrives. Not retried (a build log
 * cannot be replayed); an error before the stream starts is thrown as usual.
 */
export async function postLines(
  client: LifecycleClient,
  path: string,
  body: Record<string, Json>,
  onLine: (v: unknown) => void,
  signal?: AbortSignal,
): Promise<void> {
  const { config } = client;
  const headers = client.headers("application/x-ndjson", true);
  let res: Response;
  try {
    res = await fetch(`${config.baseUrl}${path}`, { method: "POST", headers, body: JSON.stringify(body), signal });
  } catch (err) {
    if (signal?.aborted) throw makeError({ code: "canceled", message: `POST ${path} was canceled` });
    throw networkError(config.baseUrl, err);
  }
  if (!res.ok || !res.body) throw errorFromEnvelope(res.status, await parseBody(res));
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of res.body) {
    pending += decoder.decode(chunk, { stream: true });
    let nl = pending.indexOf("\n");
    while (nl >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line !== "") onLine(JSON.parse(line) as unknown);
      nl = pending.indexOf("\n");
    }
  }
  if (pending.trim() !== "") onLine(JSON.parse(pending) as unknown);
}

function retryable(error: MitosError, attempt: number, key: string | undefined): boolean {
  if (error.code === "rate_limited" || error.code === "too_many_streams") return true;
  // Our earlier attempt with this key may still be running on the server.
  return error.code === "conflict" && attempt > 0 && key !== undefined;
}

async function parseBody(res: Response): Promise<unknown> {
  const text = await res.text();
  if (text === "") return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function isRefused(err: unknown): boolean {
  const cause = err instanceof Error ? err.cause : undefined;
  return typeof cause === "object" && cause !== null && "code" in cause && cause.code === "ECONNREFUSED";
}

function backoff(attempt: number): number {
  return RETRY_BASE_MS * 2 ** attempt * (0.75 + Math.random() * 0.5);
}

function retryAfterMs(res: Response): number | undefined {
  const s = Number(res.headers.get("retry-after"));
  return Number.isFinite(s) && s > 0 ? Math.min(s * 1000, RETRY_AFTER_CAP_MS) : undefined;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", abort);
      resolve();
    }
    function abort() {
      clearTimeout(t);
      reject(signal?.reason);
    }
    signal?.addEventListener("abort", abort, { once: true });
  });
}
