// Typed errors mirroring the API's envelope {"error":{code,message,cause,
// remediation,context}} (shared/design API.md, "Errors"). Defined here rather
// than imported from @mitos/engine so the SDK carries no server code.

import { Code, ConnectError } from "@connectrpc/connect";

import { type ErrorCode, ErrorDetailSchema, HTTP_STATUS_BY_CODE, isErrorCode } from "@mitos/proto";

export { type ErrorCode, isErrorCode };

/** HTTP status for each code, as in the API's table. */
export const STATUS_BY_CODE: Readonly<Record<ErrorCode, number>> = HTTP_STATUS_BY_CODE;

export interface MitosErrorInit {
  code: ErrorCode;
  message: string;
  remediation?: string;
  cause?: string;
  context?: Record<string, unknown>;
  /** HTTP status; defaults to the code's status in the API table. */
  status?: number;
}

export class MitosError extends Error {
  readonly code: ErrorCode;
  readonly remediation: string;
  /** The underlying reason, as text (the envelope's `cause`). */
  override readonly cause: string | undefined;
  readonly context: Record<string, unknown>;
  readonly status: number;

  constructor(init: MitosErrorInit) {
    super(init.message);
    this.name = "MitosError";
    this.code = init.code;
    this.remediation = init.remediation ?? DEFAULT_REMEDIATION[init.code];
    this.cause = init.cause;
    this.context = init.context ?? {};
    this.status = init.status ?? STATUS_BY_CODE[init.code];
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      cause: this.cause,
      remediation: this.remediation,
      context: this.context,
      status: this.status,
    };
  }
}

/** invalid_input, invalid_json. */
export class InvalidInputError extends MitosError {
  override name = "InvalidInputError";
}
/** A timeout above the server's ceiling: refused, never clamped. */
export class TimeoutTooLargeError extends InvalidInputError {
  override name = "TimeoutTooLargeError";
}
export class UnauthorizedError extends MitosError {
  override name = "UnauthorizedError";
}
/** forbidden, budget_exhausted. */
export class ForbiddenError extends MitosError {
  override name = "ForbiddenError";
}
export class NotFoundError extends MitosError {
  override name = "NotFoundError";
}
/** Wrong state (e.g. exec on a paused sandbox), or an Idempotency-Key still in flight. */
export class ConflictError extends MitosError {
  override name = "ConflictError";
}
/** idle_timeout: the sandbox was already reaped at its deadline. */
export class SandboxExpiredError extends MitosError {
  override name = "SandboxExpiredError";
}
export class BodyTooLargeError extends MitosError {
  override name = "BodyTooLargeError";
}
/** quota_exceeded. */
export class QuotaExceededError extends MitosError {
  override name = "QuotaExceededError";
}
/** rate_limited, too_many_streams: retry later. */
export class RateLimitedError extends MitosError {
  override name = "RateLimitedError";
}
export class CanceledError extends MitosError {
  override name = "CanceledError";
}
/** internal, exec_failed, file_failed, fork_failed. */
export class InternalError extends MitosError {
  override name = "InternalError";
}
/** No capacity, QEMU missing, or mitosd not reachable. */
export class UnavailableError extends MitosError {
  override name = "UnavailableError";
}
export class ExecTimeoutError extends MitosError {
  override name = "ExecTimeoutError";
}

type ErrorClass = new (init: MitosErrorInit) => MitosError;

const CLASS_BY_CODE: Readonly<Record<ErrorCode, ErrorClass>> = {
  invalid_input: InvalidInputError,
  invalid_json: InvalidInputError,
  timeout_too_large: TimeoutTooLargeError,
  unauthorized: UnauthorizedError,
  forbidden: ForbiddenError,
  budget_exhausted: ForbiddenError,
  not_found: NotFoundError,
  conflict: ConflictError,
  idle_timeout: SandboxExpiredError,
  body_too_large: BodyTooLargeError,
  quota_exceeded: QuotaExceededError,
  rate_limited: RateLimitedError,
  too_many_streams: RateLimitedError,
  canceled: CanceledError,
  internal: InternalError,
  exec_failed: InternalError,
  file_failed: InternalError,
  fork_failed: InternalError,
  unavailable: UnavailableError,
  exec_timeout: ExecTimeoutError,
};

// Used when the error did not come with the server's own remediation
// (Connect errors, non-envelope bodies, client-side failures).
const DEFAULT_REMEDIATION: Readonly<Record<ErrorCode, string>> = {
  invalid_input: "Check the arguments against the API reference; the message names the bad field.",
  invalid_json: "Send a valid JSON body.",
  timeout_too_large: "Ask for a shorter timeout; the server refuses timeouts above its ceiling rather than clamping.",
  unauthorized:
    "Pass apiKey, set MITOS_API_KEY, or make the token file ($MITOS_DATA_DIR/token, default /var/lib/mitos/token) readable.",
  forbidden: "The token may not do this. Use a token with access to this resource.",
  budget_exhausted: "The budget for this token is spent. Raise the budget or wait for it to reset.",
  not_found: "Check the id; list sandboxes or templates to see what exists.",
  conflict: "The resource is in the wrong state for this call (e.g. paused). Check its state with info() and retry.",
  idle_timeout: "The sandbox reached its deadline and was reaped. Create or fork a new one; extend with setTimeout().",
  body_too_large: "Send less data per request (split large files into several writes).",
  quota_exceeded: "Terminate sandboxes you no longer need, or raise the quota.",
  rate_limited: "Too many requests or streams at once. Retry after a short wait.",
  too_many_streams: "Too many concurrent streams on this sandbox. Wait for some to finish and retry.",
  canceled: "The call was canceled before it finished.",
  internal: "An internal error in mitosd. Check its log; retry if the failure was transient.",
  exec_failed: "Check that the command exists in the sandbox image and that cwd is a directory.",
  file_failed: "Check the path and its permissions in the sandbox.",
  fork_failed: "The fork failed in mitosd. Check its log; the source sandbox is unchanged.",
  unavailable: "mitosd has no capacity or QEMU is missing. Check `mitos up` output and the daemon log.",
  exec_timeout: "The command ran past its deadline. Pass a larger timeoutSeconds.",
};

/** Builds the error class that matches `init.code`. */
export function makeError(init: MitosErrorInit): MitosError {
  const Cls = CLASS_BY_CODE[init.code];
  return new Cls(init);
}

function codeForStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
      return "invalid_input";
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case 404:
      return "not_found";
    case 409:
      return "conflict";
    case 410:
      return "idle_timeout";
    case 413:
      return "body_too_large";
    case 429:
      return "rate_limited";
    case 499:
      return "canceled";
    case 502:
    case 503:
      return "unavailable";
    case 504:
      return "exec_timeout";
    default:
      return "internal";
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Turns an HTTP error response into a typed error. `body` is the parsed JSON
 * (or the raw text when it was not JSON, e.g. from a proxy).
 */
export function errorFromEnvelope(status: number, body: unknown): MitosError {
  const env = isRecord(body) && isRecord(body.error) ? body.error : undefined;
  if (!env) {
    const text = typeof body === "string" ? body.slice(0, 200) : "";
    return makeError({
      code: codeForStatus(status),
      message: `HTTP ${status} without an error envelope${text ? `: ${text}` : ""}`,
      status,
    });
  }
  const rawCode = env.code;
  const known = isErrorCode(rawCode);
  const context = isRecord(env.context) ? env.context : {};
  return makeError({
    code: known ? rawCode : codeForStatus(status),
    message: typeof env.message === "string" ? env.message : `HTTP ${status}`,
    remediation: typeof env.remediation === "string" ? env.remediation : undefined,
    cause: typeof env.cause === "string" ? env.cause : undefined,
    // An unknown code (a newer server) is kept so nothing is lost.
    context: known || rawCode === undefined ? context : { ...context, serverCode: rawCode },
    status,
  });
}

export const ERROR_CODE_HEADER = "x-mitos-error-code";

function codeForConnect(code: Code): ErrorCode {
  switch (code) {
    case Code.NotFound:
      return "not_found";
    case Code.PermissionDenied:
      return "forbidden";
    case Code.Unauthenticated:
      return "unauthorized";
    case Code.DeadlineExceeded:
      return "exec_timeout";
    case Code.InvalidArgument:
      return "invalid_input";
    case Code.FailedPrecondition:
      return "conflict";
    case Code.ResourceExhausted:
      return "quota_exceeded";
    case Code.Unavailable:
      return "unavailable";
    case Code.Canceled:
      return "canceled";
    default:
      return "internal";
  }
}

/**
 * Maps an error from the runtime (Connect) to the same classes as REST errors.
 * The API envelope travels as a sandbox.v1.ErrorDetail in the error's
 * details, the code also in the `x-mitos-error-code` header or trailer;
 * without either the Connect code is mapped.
 */
export function errorFromConnect(err: unknown, baseUrl: string): MitosError {
  if (err instanceof MitosError) return err;
  const ce = ConnectError.from(err);
  const detail = ce.findDetails(ErrorDetailSchema)[0];
  const headerCode = detail?.code || ce.metadata.get(ERROR_CODE_HEADER)?.trim();
  const code = isErrorCode(headerCode) ? headerCode : codeForConnect(ce.code);
  // No answer from mitosd at all (refused, reset, a broken pipe mid-request: a restart): unavailable,
  // whatever Connect code the client library chose for it.
  if (!headerCode && isNetworkFailure(ce)) {
    return networkError(baseUrl, ce.cause ?? ce);
  }
  return makeError({
    code,
    message: ce.rawMessage,
    cause: detail?.cause ?? (ce.cause instanceof Error ? ce.cause.message : undefined),
    ...(detail?.remediation ? { remediation: detail.remediation } : {}),
    context: { connectCode: Code[ce.code] },
  });
}

// Connect errors that the client made up because no HTTP response came back.
function isNetworkFailure(ce: ConnectError): boolean {
  const c = ce.cause;
  return typeof c === "object" && c !== null && "code" in c && typeof c.code === "string" && c.code.startsWith("E");
}

/**
 * A stream that was under way when the connection to mitosd broke (mitosd
 * restarted or died, or the network dropped), as opposed to a server that
 * never answered. Undefined when the error came from mitosd itself.
 */
export function streamLost(ce: ConnectError, baseUrl: string, what: string, sandboxId: string): MitosError | undefined {
  if (ce.findDetails(ErrorDetailSchema).length > 0 || ce.metadata.get(ERROR_CODE_HEADER)) return undefined;
  // A reset mid-response surfaces as Aborted ("aborted") in connect-node; the caller's own abort is checked by the caller.
  const broken = [Code.Aborted, Code.Internal, Code.Unknown, Code.Unavailable];
  if (!broken.includes(ce.code)) return undefined;
  return makeError({
    code: "unavailable",
    message: `the connection to mitosd at ${baseUrl} was lost during ${what} in sandbox ${sandboxId}`,
    cause: describe(ce.cause ?? ce),
    remediation:
      "The command may still be running in the sandbox (a restarted mitosd keeps sandboxes running). Check it with get() or processes() before running it again.",
    context: { baseUrl, sandboxId, connectCode: Code[ce.code] },
    status: 0,
  });
}

/** The server could not be reached at all. */
export function networkError(baseUrl: string, reason: unknown): MitosError {
  return makeError({
    code: "unavailable",
    message: `cannot reach mitosd at ${baseUrl}`,
    cause: describe(reason),
    remediation: `Start the daemon with \`mitos up\` (or run mitosd), and check that MITOS_BASE_URL (now ${baseUrl}) points at it.`,
    context: { baseUrl },
    status: 0,
  });
}

function describe(reason: unknown): string {
  if (reason instanceof Error) {
    // fetch wraps the socket error (ECONNREFUSED…) in `cause`.
    const inner: unknown = reason.cause;
    if (inner instanceof Error) {
      const code = "code" in inner && typeof inner.code === "string" ? `${inner.code}: ` : "";
      return `${code}${inner.message}`;
    }
    const code = "code" in reason && typeof reason.code === "string" ? `${reason.code}: ` : "";
    return `${code}${reason.message}`;
  }
  return String(reason);
}
