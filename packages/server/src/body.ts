// Readers for lifecycle request bodies: each names the field it rejects, and
// unknown keys are refused, never dropped (UPSTREAM-WIRE.md row 9).

import { MitosError } from "@mitos/engine";
import type { FastifyRequest } from "fastify";
import { invalid } from "./errors.js";

export type Body = Record<string, unknown>;

/** The request's JSON object; unknown keys refused (notYet: keys refused with a reason). */
export function readBody(req: FastifyRequest, known: string[], notYet: Record<string, string> = {}): Body {
  const b = req.body ?? {};
  if (typeof b !== "object" || Array.isArray(b)) throw invalid("the body must be a JSON object", "Send a JSON object.");
  refuseUnknown(b as Body, known, "", notYet);
  return b as Body;
}

/** A key that is neither known nor null is invalid_input naming it: a request is never half honoured. */
export function refuseUnknown(b: Body, known: string[], prefix: string, notYet: Record<string, string> = {}): void {
  for (const [k, v] of Object.entries(b)) {
    if (known.includes(k) || v === null) continue;
    const why = prefix === "" ? notYet[k] : undefined;
    throw new MitosError(
      "invalid_input",
      why ? `${prefix}${k} is not supported: ${why}` : `unknown key ${JSON.stringify(prefix + k)}`,
      {
        remediation: why
          ? `Remove "${prefix}${k}" from the request.`
          : `Remove it or fix its spelling; this route takes ${known.map((x) => prefix + x).join(", ")}.`,
        context: { field: prefix + k },
      },
    );
  }
}

export function str(b: Body, k: string, required: true): string;
export function str(b: Body, k: string, required?: false): string | undefined;
export function str(b: Body, k: string, required = false): string | undefined {
  const v = b[k];
  if (v === undefined || v === null) {
    if (required) throw invalid(`${k} is required`, `Pass "${k}" as a string.`, { field: k });
    return undefined;
  }
  if (typeof v !== "string") throw invalid(`${k} must be a string`, `Pass "${k}" as a string.`, { field: k });
  noNul(k, v);
  return v;
}

export function int(b: Body, k: string, required: true): number;
export function int(b: Body, k: string, required?: false): number | undefined;
export function int(b: Body, k: string, required = false): number | undefined {
  const v = b[k];
  if (v === undefined || v === null) {
    if (required) throw invalid(`${k} is required`, `Pass "${k}" as a whole number.`, { field: k });
    return undefined;
  }
  if (typeof v !== "number" || !Number.isSafeInteger(v)) {
    throw invalid(`${k} must be a whole number`, `Pass "${k}" as a whole number.`, { field: k });
  }
  return v;
}

export function bool(b: Body, k: string): boolean | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw invalid(`${k} must be true or false`, `Pass "${k}" as a boolean.`, { field: k });
  return v;
}

export function obj(b: Body, k: string): Body | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v)) throw invalid(`${k} must be an object`, `Pass "${k}" as an object.`);
  return v as Body;
}

export function strList(b: Body, k: string): string[] | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
    throw invalid(`${k} must be a list of strings`, `Pass "${k}" as ["…", …].`, { field: k });
  }
  for (const x of v as string[]) noNul(k, x);
  return v as string[];
}

export function strMap(b: Body, k: string): Record<string, string> | undefined {
  const v = obj(b, k);
  if (!v) return undefined;
  for (const [key, val] of Object.entries(v)) {
    if (typeof val !== "string") throw invalid(`${k}.${key} must be a string`, `Give every "${k}" value as a string.`);
    noNul(k, key);
    noNul(k, val);
  }
  return v as Record<string, string>;
}

/** Strings end up in guest argv/env, where NUL cannot travel. */
function noNul(k: string, v: string): void {
  if (v.includes("\0"))
    throw invalid(`${k} cannot contain NUL bytes`, "Remove the NUL (\\0) characters.", { field: k });
}

/** `{[k]: v}` when v is defined, else `{}` (keeps exactOptionalPropertyTypes-style objects clean). */
export function optional<K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: V };
}
