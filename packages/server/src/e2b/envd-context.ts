// What every envd handler needs: the engine, the E2B registry, and the
// sandbox and user of the call. The sandbox plane (plane.ts) resolves the
// sandbox from E2b-Sandbox-Id or the Host, checks the access token, and
// passes the Mitos id on in SANDBOX_HEADER (a client-sent value is dropped
// first), so handlers never see an unchecked id.

import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { type Engine, MitosError } from "@mitos/engine";
import type { ErrorCode } from "@mitos/proto";
import type { E2bRegistry } from "./registry.js";
import { type GuestUser, guestUser } from "./users.js";

export const SANDBOX_HEADER = "x-mitos-e2b-sandbox";

export interface EnvdDeps {
  engine: Engine;
  registry: E2bRegistry;
}

/** The checked Mitos sandbox id of a call. */
export function callSandbox(ctx: HandlerContext): string {
  const id = ctx.requestHeader.get(SANDBOX_HEADER);
  if (!id) throw new ConnectError("no sandbox named (E2b-Sandbox-Id)", Code.Unavailable);
  return id;
}

/** The call's guest user; `unauthenticated` "invalid username" for a name the guest lacks, as envd. */
export async function callUser(deps: EnvdDeps, id: string, ctx: HandlerContext): Promise<GuestUser> {
  const user = await guestUser(deps.engine.agent(id), ctx.requestHeader.get("authorization"));
  if (!user) throw new ConnectError("invalid username", Code.Unauthenticated);
  return user;
}

const ENVD_CODES: Partial<Record<ErrorCode, Code>> = {
  not_found: Code.NotFound,
  invalid_input: Code.InvalidArgument,
  invalid_json: Code.InvalidArgument,
  conflict: Code.AlreadyExists,
  unauthorized: Code.Unauthenticated,
  forbidden: Code.PermissionDenied,
  quota_exceeded: Code.ResourceExhausted,
  rate_limited: Code.ResourceExhausted,
  too_many_streams: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  exec_timeout: Code.DeadlineExceeded,
  canceled: Code.Canceled,
};

/** Engine and agent errors in the codes the E2B SDKs map (E2B-COMPAT.md §4). */
export function envdError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof MitosError) {
    const code = ENVD_CODES[err.code] ?? Code.Internal;
    return new ConnectError(err.message, code);
  }
  return new ConnectError((err as Error).message ?? String(err), Code.Internal);
}

/** A unary handler whose errors reach the client in envd's codes. */
export function unary<I, O>(
  f: (req: I, ctx: HandlerContext) => Promise<O>,
): (req: I, ctx: HandlerContext) => Promise<O> {
  return async (req, ctx) => {
    try {
      return await f(req, ctx);
    } catch (err) {
      throw envdError(err);
    }
  };
}
