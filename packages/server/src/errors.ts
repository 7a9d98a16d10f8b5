// The API's error envelope (API.md "Errors") and its mapping to HTTP status
// codes and Connect codes. Every failure path goes through here.

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorCode, MitosError } from "@mitos/engine";
import { ErrorDetailSchema, HTTP_STATUS_BY_CODE } from "@mitos/proto";

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
    /** Absent when there is none: never null (clients call string methods on it). */
    cause?: string;
    remediation: string;
    context: Record<string, unknown>;
  };
}

/** Any thrown value as a MitosError; unknown errors become `internal` without leaking details. */
export function toMitosError(err: unknown): MitosError {
  if (err instanceof MitosError) return err;
  if (err instanceof ConnectError) {
    const detail = err.findDetails(ErrorDetailSchema)[0];
    const code = (detail?.code || err.metadata.get("x-mitos-error-code") || "internal") as ErrorCode;
    return new MitosError(code, err.rawMessage, {
      remediation: detail?.remediation || err.metadata.get("x-mitos-remediation") || "",
      ...(detail?.cause ? { cause: detail.cause } : {}),
    });
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
      ...(err.detail ? { cause: err.detail } : {}),
      remediation: err.remediation,
      context: err.context,
    },
  };
}

/**
 * A MitosError as a Connect error: the API envelope travels as an ErrorDetail
 * in the error's details, and code and remediation also as metadata (headers
 * or trailers) for clients that read those.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const m = toMitosError(err);
  const detail = create(ErrorDetailSchema, {
    code: m.code,
    remediation: m.remediation,
    ...(m.detail ? { cause: m.detail } : {}),
  });
  const ce = new ConnectError(m.message, CONNECT_CODE[m.code] ?? Code.Internal, undefined, [
    { desc: ErrorDetailSchema, value: detail },
  ]);
  ce.metadata.set("x-mitos-error-code", m.code);
  ce.metadata.set("x-mitos-remediation", m.remediation);
  return ce;
}

export function invalid(message: string, remediation: string, context: Record<string, unknown> = {}): MitosError {
  return new MitosError("invalid_input", message, { remediation, context });
}

/** The field a JSON-schema failure is about, dotted from the body's top ("network", "resources.gpus"). */
export function fieldOf(v: { instancePath?: string; params?: Record<string, unknown> }): string | undefined {
  const parts = (v.instancePath ?? "").split("/").filter((p) => p !== "" && !/^\d+$/.test(p));
  const extra = v.params?.additionalProperty;
  if (typeof extra === "string") parts.push(extra);
  return parts.length > 0 ? parts.join(".") : undefined;
}
