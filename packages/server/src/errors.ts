// The API's error envelope (API.md "Errors") and its mapping to HTTP status
// codes and Connect codes. Every failure path goes through here.

import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorCode, MitosError } from "@mitos/engine";
import { HTTP_STATUS_BY_CODE } from "@mitos/proto";

export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = HTTP_STATUS_BY_CODE;

const CONNECT_CODE: Record<ErrorCode, Code> = {
  invalid_input: Code.InvalidArgument,
  invalid_json: Code.InvalidArgument,
  timeout_too_large: Code.InvalidArgument,
  unauthorized: Code.Unauthenticated,
  forbidden: Code.PermissionDenied,
  budget_exhausted: Code.PermissionDenied,
  not_found: Code.NotFound,
  conflict: Code.FailedPrecondition,
  idle_timeout: Code.NotFound,
  body_too_large: Code.ResourceExhausted,
  quota_exceeded: Code.ResourceExhausted,
  rate_limited: Code.ResourceExhausted,
  too_many_streams: Code.ResourceExhausted,
  canceled: Code.Canceled,
  internal: Code.Internal,
  exec_failed: Code.Internal,
  file_failed: Code.Internal,
  fork_failed: Code.Internal,
  unavailable: Code.Unavailable,
  exec_timeout: Code.DeadlineExceeded,
};

export interface Envelope {
  error: {
    code: ErrorCode;
    message: string;
    cause: string | null;
    remediation: string;
    context: Record<string, unknown>;
  };
}

/** Any thrown value as a MitosError; unknown errors become `internal` without leaking details. */
export function toMitosError(err: unknown): MitosError {
  if (err instanceof MitosError) return err;
  if (err instanceof ConnectError) {
    const code = (err.metadata.get("x-mitos-error-code") as ErrorCode | null) ?? "internal";
    return new MitosError(code, err.rawMessage, { remediation: err.metadata.get("x-mitos-remediation") ?? "" });
  }
  return new MitosError("internal", "internal error", {
    remediation: "This is a bug in mitosd; the server log has the details. Retry the request.",
    cause: err instanceof Error ? err.name : undefined,
  });
}

export function envelope(err: MitosError): Envelope {
  return {
    error: {
      code: err.code,
      message: err.message,
      cause: err.detail ?? null,
      remediation: err.remediation,
      context: err.context,
    },
  };
}

/** A MitosError as a Connect error: the API code and remediation travel as metadata. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const m = toMitosError(err);
  const ce = new ConnectError(m.message, CONNECT_CODE[m.code] ?? Code.Internal);
  ce.metadata.set("x-mitos-error-code", m.code);
  ce.metadata.set("x-mitos-remediation", m.remediation);
  return ce;
}

export function invalid(message: string, remediation: string, context: Record<string, unknown> = {}): MitosError {
  return new MitosError("invalid_input", message, { remediation, context });
}
