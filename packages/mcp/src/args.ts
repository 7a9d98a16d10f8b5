// Tool arguments under two spellings: ours (template, sandbox_id, count) and
// the public Mitos project's MCP server's (pool, sandbox, replicas), see
// shared/design UPSTREAM-WIRE.md, "MCP tool schema upstream". Pure functions:
// each refuses with an InvalidInputError, which the tools turn into an isError
// result.

import { InvalidInputError } from "@mitos/sdk";

/**
 * Refuses keys the tool does not know, naming them. The schemas are loose
 * objects so that unknown keys reach us instead of being stripped by zod.
 */
export function rejectUnknown(tool: string, args: object, known: readonly string[]): void {
  const unknown = Object.keys(args).filter((k) => !known.includes(k));
  if (unknown.length === 0) return;
  const list = unknown.map((k) => JSON.stringify(k)).join(", ");
  throw new InvalidInputError({
    code: "invalid_input",
    message: `${tool}: unknown argument${unknown.length > 1 ? "s" : ""} ${list}`,
    remediation:
      known.length > 0
        ? `${tool} takes only: ${known.join(", ")}.`
        : `${tool} takes no arguments; call it with an empty object.`,
    context: { tool, unknown },
  });
}

/**
 * The value given under our name or the upstream name. Giving both is fine if
 * they agree; different values are refused, naming both. With `required`, one
 * of the two must be present.
 */
export function either<T>(
  tool: string,
  ours: readonly [name: string, value: T | undefined],
  upstream: readonly [name: string, value: T | undefined],
  required: true,
): T;
export function either<T>(
  tool: string,
  ours: readonly [name: string, value: T | undefined],
  upstream: readonly [name: string, value: T | undefined],
  required?: false,
): T | undefined;
export function either<T>(
  tool: string,
  [oursName, oursValue]: readonly [name: string, value: T | undefined],
  [upName, upValue]: readonly [name: string, value: T | undefined],
  required = false,
): T | undefined {
  if (oursValue !== undefined && upValue !== undefined && oursValue !== upValue) {
    throw new InvalidInputError({
      code: "invalid_input",
      message: `${tool}: "${oursName}" and "${upName}" name the same argument but differ (${JSON.stringify(oursValue)} vs ${JSON.stringify(upValue)})`,
      remediation: `Give only one of "${oursName}" and "${upName}" ("${upName}" is the upstream Mitos name).`,
      context: { tool, [oursName]: oursValue, [upName]: upValue },
    });
  }
  const value = oursValue ?? upValue;
  if (required && value === undefined) {
    throw new InvalidInputError({
      code: "invalid_input",
      message: `${tool}: missing argument "${oursName}" (or its upstream name "${upName}")`,
      remediation: `Pass "${oursName}" or "${upName}".`,
      context: { tool },
    });
  }
  return value;
}
