// One line a person can act on, from whatever a call threw.

import { ConnectError } from "@connectrpc/connect";
import { ApiError } from "./api.js";

export function describe(e: unknown): string {
  if (e instanceof ApiError) return `${e.message} (${e.code})${e.remediation ? ` — ${e.remediation}` : ""}`;
  if (e instanceof ConnectError) return `${e.rawMessage} (${e.code})`;
  if (e instanceof TypeError) return `mitosd did not answer: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
