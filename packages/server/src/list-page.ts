// Paging and filtering of the runtime `List` call (AIP-158 paging, a small
// AIP-160 filter subset), as the public Mitos clients send them.

import type { FileInfo } from "@mitos/proto";
import { invalid } from "./errors.js";

export interface ListPaging {
  pageSize: number;
  pageToken: string;
  filter: string;
}

type Clause = (f: FileInfo) => boolean;

/** Checks the request and returns the function that cuts one page from a directory's entries. */
export function listPage(req: ListPaging): (all: FileInfo[]) => { entries: FileInfo[]; nextPageToken: string } {
  if (req.pageSize < 0)
    throw invalid(`pageSize ${req.pageSize} is negative`, "Pass 0 for all entries, or a page size.");
  const after = req.pageToken ? decodeToken(req.pageToken) : undefined;
  const clauses = parseFilter(req.filter);
  return (all) => {
    const matching = all
      .filter((f) => clauses.every((c) => c(f)))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const start = after === undefined ? 0 : matching.findIndex((f) => f.name > after);
    const rest = start < 0 ? [] : matching.slice(start);
    const entries = req.pageSize > 0 ? rest.slice(0, req.pageSize) : rest;
    const last = entries.at(-1);
    const more = last !== undefined && entries.length < rest.length;
    return { entries, nextPageToken: more ? encodeToken(last.name) : "" };
  };
}

// The token names the last entry returned: a page stays correct when entries
// are added or removed between calls.
function encodeToken(name: string): string {
  return Buffer.from(`after:${name}`).toString("base64url");
}

function decodeToken(token: string): string {
  const s = Buffer.from(token, "base64url").toString("utf8");
  if (!s.startsWith("after:") || encodeToken(s.slice(6)) !== token) {
    throw invalid(
      "pageToken is not one this server issued",
      "Pass nextPageToken from the previous List answer, or omit it.",
      {
        page_token: token.slice(0, 100),
      },
    );
  }
  return s.slice(6);
}

const FILTER_HELP = 'Use clauses is_dir=true, is_dir=false or name="*.py" (* and ? wildcards), joined by AND.';

function parseFilter(filter: string): Clause[] {
  if (filter.trim() === "") return [];
  if (filter.length > 1024) throw invalid("filter is longer than 1024 characters", FILTER_HELP);
  return filter.split(/\s+AND\s+/).map((raw) => {
    const m = /^\s*(is_dir|name)\s*=\s*(.*?)\s*$/.exec(raw);
    if (!m) throw invalid(`unsupported filter clause ${JSON.stringify(raw.trim())}`, FILTER_HELP, { filter });
    const [, field, value = ""] = m;
    if (field === "is_dir") {
      if (value !== "true" && value !== "false") {
        throw invalid(`is_dir must be compared with true or false, got ${JSON.stringify(value)}`, FILTER_HELP);
      }
      const want = value === "true";
      return (f: FileInfo) => f.isDir === want;
    }
    const glob = /^"(.*)"$/.exec(value)?.[1] ?? value;
    const re = new RegExp(
      `^${glob
        .replace(/[.+^${}()|[\]\\]/g, "\\$&")
        .replaceAll("*", ".*")
        .replaceAll("?", ".")}$`,
      "s",
    );
    return (f: FileInfo) => re.test(f.name);
  });
}
