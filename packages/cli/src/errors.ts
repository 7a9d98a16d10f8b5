// Exit codes and how errors are shown: `error: <code>: <message>`, then
// `cause: …` and `fix: …` lines, all on stderr.

import { MitosError } from "@mitos/sdk";
import { CommanderError } from "commander";

export const EXIT = {
  ok: 0,
  error: 1,
  usage: 2,
  notFound: 3,
  timeout: 124,
} as const;

/** A usage problem found after parsing (bad combination of options and so on): exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A failure of the CLI itself with its own code and fix (not from mitosd). */
export class CliError extends Error {
  override name = "CliError";
  constructor(
    readonly code: string,
    message: string,
    readonly remediation?: string,
    readonly exitCode: number = EXIT.error,
    readonly detail?: string,
  ) {
    super(message);
  }
}

/** The process exit code for an error thrown by a command. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  if (err instanceof UsageError) return EXIT.usage;
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof MitosError) {
    switch (err.code) {
      case "not_found":
      case "idle_timeout":
        return EXIT.notFound;
      case "exec_timeout":
        return EXIT.timeout;
      default:
        return EXIT.error;
    }
  }
  return EXIT.error;
}

/** The lines printed to stderr for an error (empty for commander's own, which prints itself). */
export function formatError(err: unknown): string {
  if (err instanceof CommanderError) return "";
  if (err instanceof UsageError) return `error: usage: ${err.message}\n(see --help)\n`;
  if (err instanceof CliError) {
    let s = `error: ${err.code}: ${err.message}\n`;
    if (err.detail) s += `cause: ${err.detail}\n`;
    if (err.remediation) s += `fix: ${err.remediation}\n`;
    return s;
  }
  if (err instanceof MitosError) {
    let s = `error: ${err.code}: ${err.message}\n`;
    if (err.cause) s += `cause: ${err.cause}\n`;
    if (err.remediation) s += `fix: ${err.remediation}\n`;
    return s;
  }
  const msg = err instanceof Error ? err.message : String(err);
  return `error: internal: ${msg}\nfix: this looks like a bug in mitos; rerun with MITOS_DEBUG=1 for a stack trace and report it\n`;
}
