// Where mitosd is and how to authenticate to it: explicit options first, then
// the environment, then the token file mitosd writes on first start.

import { readFileSync } from "node:fs";
import path from "node:path";

export const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
export const DEFAULT_DATA_DIR = "/var/lib/mitos";

export interface ClientOptions {
  /** mitosd address; default MITOS_BASE_URL, else http://127.0.0.1:8080. */
  baseUrl?: string;
  /** Bearer token; default MITOS_API_KEY, else the token file in MITOS_DATA_DIR. */
  apiKey?: string;
  /** Retries of network failures and rate limits per call (default 2). */
  maxRetries?: number;
}

export interface ResolvedConfig {
  baseUrl: string;
  apiKey: string | undefined;
  maxRetries: number;
}

export type Env = Readonly<Record<string, string | undefined>>;
export type ReadText = (file: string) => string;

const readUtf8: ReadText = (file) => readFileSync(file, "utf8");

/** Path of the token file mitosd creates (mode 0600) in its data dir. */
export function tokenFilePath(env: Env = process.env): string {
  return path.join(nonEmpty(env.MITOS_DATA_DIR) ?? DEFAULT_DATA_DIR, "token");
}

export function resolveConfig(
  opts: ClientOptions = {},
  env: Env = process.env,
  read: ReadText = readUtf8,
): ResolvedConfig {
  const baseUrl = (nonEmpty(opts.baseUrl) ?? nonEmpty(env.MITOS_BASE_URL) ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
  const apiKey = nonEmpty(opts.apiKey) ?? nonEmpty(env.MITOS_API_KEY) ?? readToken(tokenFilePath(env), read);
  const maxRetries = opts.maxRetries ?? 2;
  return { baseUrl, apiKey, maxRetries };
}

function readToken(file: string, read: ReadText): string | undefined {
  try {
    return nonEmpty(read(file).trim());
  } catch {
    // Not there or not readable: go without a token; the server's 401
    // explains how to supply one.
    return undefined;
  }
}

function nonEmpty(v: string | undefined): string | undefined {
  return v !== undefined && v.trim() !== "" ? v.trim() : undefined;
}
