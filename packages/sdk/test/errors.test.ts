import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorCode, errorFromConnect, errorFromEnvelope, networkError, STATUS_BY_CODE } from "../src/errors.js";
import {
  ConflictError,
  ExecTimeoutError,
  ForbiddenError,
  InternalError,
  InvalidInputError,
  MitosError,
  NotFoundError,
  QuotaExceededError,
  RateLimitedError,
  SandboxExpiredError,
  TimeoutTooLargeError,
  UnauthorizedError,
  UnavailableError,
} from "../src/index.js";

const BASE = "http://127.0.0.1:8080";

describe("error envelope → typed error", () => {
  it("keeps every envelope field and the HTTP status", () => {
    const e = errorFromEnvelope(404, {
      error: {
        code: "not_found",
        message: "no sandbox sb-1",
        cause: "unknown id",
        remediation: "list sandboxes",
        context: { sandbox: "sb-1" },
      },
    });
    assert.ok(e instanceof NotFoundError);
    assert.ok(e instanceof MitosError);
    assert.ok(e instanceof Error);
    assert.equal(e.name, "NotFoundError");
    assert.equal(e.code, "not_found");
    assert.equal(e.message, "no sandbox sb-1");
    assert.equal(e.cause, "unknown id");
    assert.equal(e.remediation, "list sandboxes");
    assert.deepEqual(e.context, { sandbox: "sb-1" });
    assert.equal(e.status, 404);
  });

  it("picks the class for each code", () => {
    const cases: [ErrorCode, abstract new (...a: never[]) => MitosError][] = [
      ["invalid_input", InvalidInputError],
      ["invalid_json", InvalidInputError],
      ["timeout_too_large", TimeoutTooLargeError],
      ["unauthorized", UnauthorizedError],
      ["forbidden", ForbiddenError],
      ["budget_exhausted", ForbiddenError],
      ["conflict", ConflictError],
      ["idle_timeout", SandboxExpiredError],
      ["quota_exceeded", QuotaExceededError],
      ["rate_limited", RateLimitedError],
      ["too_many_streams", RateLimitedError],
      ["fork_failed", InternalError],
      ["unavailable", UnavailableError],
      ["exec_timeout", ExecTimeoutError],
    ];
    for (const [code, cls] of cases) {
      const e = errorFromEnvelope(STATUS_BY_CODE[code], { error: { code, message: "m", remediation: "r" } });
      assert.ok(e instanceof cls, code);
      assert.equal(e.code, code);
    }
    assert.ok(
      errorFromEnvelope(400, { error: { code: "timeout_too_large", message: "m" } }) instanceof InvalidInputError,
    );
  });

  it("falls back to the HTTP status for bodies that are not envelopes or codes it does not know", () => {
    const proxy = errorFromEnvelope(502, "<html>bad gateway</html>");
    assert.ok(proxy instanceof UnavailableError);
    assert.match(proxy.message, /HTTP 502/);
    assert.ok(proxy.remediation.length > 0);
    const newer = errorFromEnvelope(429, { error: { code: "brand_new", message: "m", remediation: "r" } });
    assert.ok(newer instanceof RateLimitedError);
    assert.equal(newer.context.serverCode, "brand_new");
  });
});

describe("Connect error → typed error", () => {
  it("uses x-mitos-error-code when the server sent it", () => {
    const ce = new ConnectError("timeout 99999 above 3600", Code.InvalidArgument, {
      "x-mitos-error-code": "timeout_too_large",
    });
    const e = errorFromConnect(ce, BASE);
    assert.ok(e instanceof TimeoutTooLargeError);
    assert.equal(e.message, "timeout 99999 above 3600");
    assert.equal(e.status, 400);
  });

  it("maps Connect codes when the header is missing", () => {
    const cases: [Code, ErrorCode][] = [
      [Code.NotFound, "not_found"],
      [Code.PermissionDenied, "forbidden"],
      [Code.Unauthenticated, "unauthorized"],
      [Code.DeadlineExceeded, "exec_timeout"],
      [Code.InvalidArgument, "invalid_input"],
      [Code.FailedPrecondition, "conflict"],
      [Code.ResourceExhausted, "quota_exceeded"],
      [Code.Unavailable, "unavailable"],
      [Code.Canceled, "canceled"],
      [Code.Internal, "internal"],
      [Code.Unknown, "internal"],
      [Code.DataLoss, "internal"],
    ];
    for (const [connect, api] of cases) assert.equal(errorFromConnect(new ConnectError("m", connect), BASE).code, api);
  });

  it("turns a refused connection into unavailable with a `mitos up` remediation", () => {
    const sock = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:8080"), { code: "ECONNREFUSED" });
    const ce = new ConnectError("connect ECONNREFUSED", Code.Unavailable, undefined, undefined, sock);
    for (const e of [errorFromConnect(ce, BASE), networkError(BASE, new TypeError("fetch failed", { cause: sock }))]) {
      assert.ok(e instanceof UnavailableError);
      assert.match(e.remediation, /mitos up/);
      assert.match(e.remediation, /MITOS_BASE_URL/);
      assert.match(e.cause ?? "", /ECONNREFUSED/);
    }
  });

  it("a connection reset or a broken pipe mid-request (a restarting mitosd) is unavailable, whatever the Connect code", () => {
    for (const [msg, code, connect] of [
      ["read ECONNRESET", "ECONNRESET", Code.Internal],
      ["write EPIPE", "EPIPE", Code.Unknown],
      ["socket hang up", "ECONNRESET", Code.Internal],
    ] as const) {
      const sock = Object.assign(new Error(msg), { code });
      const e = errorFromConnect(new ConnectError(msg, connect, undefined, undefined, sock), BASE);
      assert.ok(e instanceof UnavailableError, `${msg}: ${e.code}`);
    }
    // mitosd's own internal error (with its code in the details) stays internal.
    assert.equal(errorFromConnect(new ConnectError("boom", Code.Internal), BASE).code, "internal");
  });
});
