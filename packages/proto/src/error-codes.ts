// The API's error codes and their HTTP statuses (shared/design API.md,
// "Errors"): part of the wire contract, shared by the engine, mitosd and the SDK.

export const HTTP_STATUS_BY_CODE = {
  invalid_input: 400,
  invalid_json: 400,
  timeout_too_large: 400,
  unauthorized: 401,
  forbidden: 403,
  budget_exhausted: 403,
  not_found: 404,
  conflict: 409,
  idle_timeout: 410,
  body_too_large: 413,
  quota_exceeded: 429,
  rate_limited: 429,
  too_many_streams: 429,
  canceled: 499,
  internal: 500,
  exec_failed: 500,
  file_failed: 500,
  fork_failed: 500,
  unavailable: 503,
  exec_timeout: 504,
} as const satisfies Record<string, number>;

export type ErrorCode = keyof typeof HTTP_STATUS_BY_CODE;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && Object.hasOwn(HTTP_STATUS_BY_CODE, value);
}
