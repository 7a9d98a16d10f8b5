// Flag parsing shared by the operator's commands: refuse what is unknown,
// read secrets from files (never from flags, which `ps` shows).

import fs from "node:fs";
import { parseArgs } from "node:util";

export function parseFlags(
  name: string,
  help: string,
  flags: Record<string, { default?: string }>,
): Record<string, string | undefined> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      options: {
        help: { type: "boolean", short: "h" },
        ...Object.fromEntries(Object.keys(flags).map((k) => [k, { type: "string" as const }])),
      },
    }).values;
  } catch (err) {
    console.error(`${name}: ${(err as Error).message} (see ${name} --help)`);
    process.exit(2);
  }
  if (values.help) {
    console.log(help);
    process.exit(0);
  }
  return Object.fromEntries(
    Object.entries(flags).map(([k, v]) => [k, typeof values[k] === "string" ? (values[k] as string) : v.default]),
  );
}

export function readSecret(name: string, file: string | undefined, what: string): string {
  if (!file) {
    console.error(`${name}: ${what} is required`);
    process.exit(2);
  }
  try {
    const t = fs.readFileSync(file, "utf8").trim();
    if (t.length < 16) throw new Error("shorter than 16 characters");
    return t;
  } catch (err) {
    console.error(`${name}: cannot read ${what} ${file}: ${(err as Error).message}`);
    process.exit(2);
  }
}

/** Runs a command's start, or exits 1 with its reason on one line (bad kubeconfig, CRDs missing, …). */
export async function startOrExit<T>(name: string, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (err) {
    console.error(`${name}: ${(err as Error).message}`);
    process.exit(1);
  }
}

export function logger(component: string) {
  return (msg: string, fields: Record<string, unknown> = {}) =>
    console.error(JSON.stringify({ time: new Date().toISOString(), component, msg, ...fields }));
}
