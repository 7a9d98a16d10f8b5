"""Typed errors mirroring the API's envelope
``{"error": {code, message, cause, remediation, context}}`` (API.md, "Errors").

Lifecycle (REST) errors come from that envelope; runtime (Connect) errors map
to the same classes through the ``x-mitos-error-code`` header or trailer, else
through the Connect code.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

__all__ = [
    "STATUS_BY_CODE",
    "ERROR_CODE_HEADER",
    "REMEDIATION_HEADER",
    "MitosError",
    "InvalidInputError",
    "TimeoutTooLargeError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "ConflictError",
    "SandboxExpiredError",
    "BodyTooLargeError",
    "QuotaExceededError",
    "RateLimitedError",
    "CanceledError",
    "InternalError",
    "UnavailableError",
    "ExecTimeoutError",
    "make_error",
    "error_from_envelope",
    "error_from_connect",
    "network_error",
    "code_for_status",
    "code_for_connect",
]

#: HTTP status of each API error code (the wire contract's table).
STATUS_BY_CODE: Dict[str, int] = {
    "invalid_input": 400,
    "invalid_json": 400,
    "timeout_too_large": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "budget_exhausted": 403,
    "not_found": 404,
    "conflict": 409,
    "idle_timeout": 410,
    "body_too_large": 413,
    "quota_exceeded": 429,
    "rate_limited": 429,
    "too_many_streams": 429,
    "canceled": 499,
    "internal": 500,
    "exec_failed": 500,
    "file_failed": 500,
    "fork_failed": 500,
    "unavailable": 503,
    "exec_timeout": 504,
}

ERROR_CODE_HEADER = "x-mitos-error-code"
REMEDIATION_HEADER = "x-mitos-remediation"

# Used when the error did not come with the server's own remediation
# (Connect errors, non-envelope bodies, client-side failures).
DEFAULT_REMEDIATION: Dict[str, str] = {
    "invalid_input": "Check the arguments against the API reference; the message names the bad field.",
    "invalid_json": "Send a valid JSON body.",
    "timeout_too_large": "Ask for a shorter timeout; the server refuses timeouts above its ceiling rather than clamping.",
    "unauthorized": "Pass api_key, set MITOS_API_KEY, or make the token file "
    "($MITOS_DATA_DIR/token, default /var/lib/mitos/token) readable.",
    "forbidden": "The token may not do this. Use a token with access to this resource.",
    "budget_exhausted": "The budget for this token is spent. Raise the budget or wait for it to reset.",
    "not_found": "Check the id; list sandboxes or templates to see what exists.",
    "conflict": "The resource is in the wrong state for this call (e.g. paused). Check its state with info() and retry.",
    "idle_timeout": "The sandbox reached its deadline and was reaped. Create or fork a new one; extend with set_timeout().",
    "body_too_large": "Send less data per request (split large files into several writes).",
    "quota_exceeded": "Terminate sandboxes you no longer need, or raise the quota.",
    "rate_limited": "Too many requests or streams at once. Retry after a short wait.",
    "too_many_streams": "Too many concurrent streams on this sandbox. Wait for some to finish and retry.",
    "canceled": "The call was canceled before it finished.",
    "internal": "An internal error in mitosd. Check its log; retry if the failure was transient.",
    "exec_failed": "Check that the command exists in the sandbox image and that cwd is a directory.",
    "file_failed": "Check the path and its permissions in the sandbox.",
    "fork_failed": "The fork failed in mitosd. Check its log; the source sandbox is unchanged.",
    "unavailable": "mitosd has no capacity or QEMU is missing. Check `mitos up` output and the daemon log.",
    "exec_timeout": "The command ran past its deadline. Pass a larger timeout.",
}


class MitosError(Exception):
    """Base of every error the SDK raises.

    Attributes: ``code`` (an API error code such as ``"not_found"``),
    ``message``, ``cause`` (the underlying reason as text, or None),
    ``remediation`` (what to do about it), ``context`` (a dict) and
    ``status`` (the HTTP status; 0 when mitosd could not be reached).
    """

    def __init__(
        self,
        code: str,
        message: str,
        cause: Optional[str] = None,
        remediation: Optional[str] = None,
        context: Optional[Mapping[str, Any]] = None,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.cause = cause
        self.remediation = remediation if remediation is not None else DEFAULT_REMEDIATION.get(code, "")
        self.context: Dict[str, Any] = dict(context or {})
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 500)

    def __str__(self) -> str:
        text = "%s: %s" % (self.code, self.message)
        if self.cause:
            text += " (%s)" % self.cause
        return text

    def __repr__(self) -> str:
        return "%s(code=%r, message=%r, status=%r)" % (type(self).__name__, self.code, self.message, self.status)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": type(self).__name__,
            "code": self.code,
            "message": self.message,
            "cause": self.cause,
            "remediation": self.remediation,
            "context": dict(self.context),
            "status": self.status,
        }


class InvalidInputError(MitosError):
    """invalid_input, invalid_json."""


class TimeoutTooLargeError(InvalidInputError):
    """A timeout above the server's ceiling: refused, never clamped."""


class UnauthorizedError(MitosError):
    """unauthorized: missing or wrong token."""


class ForbiddenError(MitosError):
    """forbidden, budget_exhausted."""


class NotFoundError(MitosError):
    """not_found."""


class ConflictError(MitosError):
    """Wrong state (e.g. exec on a paused sandbox), or an Idempotency-Key still in flight."""


class SandboxExpiredError(MitosError):
    """idle_timeout: the sandbox was already reaped at its deadline."""


class BodyTooLargeError(MitosError):
    """body_too_large."""


class QuotaExceededError(MitosError):
    """quota_exceeded."""


class RateLimitedError(MitosError):
    """rate_limited, too_many_streams: retry later."""


class CanceledError(MitosError):
    """canceled."""


class InternalError(MitosError):
    """internal, exec_failed, file_failed, fork_failed."""


class UnavailableError(MitosError):
    """No capacity, QEMU missing, or mitosd not reachable."""


class ExecTimeoutError(MitosError):
    """exec_timeout."""


CLASS_BY_CODE = {
    "invalid_input": InvalidInputError,
    "invalid_json": InvalidInputError,
    "timeout_too_large": TimeoutTooLargeError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "budget_exhausted": ForbiddenError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "idle_timeout": SandboxExpiredError,
    "body_too_large": BodyTooLargeError,
    "quota_exceeded": QuotaExceededError,
    "rate_limited": RateLimitedError,
    "too_many_streams": RateLimitedError,
    "canceled": CanceledError,
    "internal": InternalError,
    "exec_failed": InternalError,
    "file_failed": InternalError,
    "fork_failed": InternalError,
    "unavailable": UnavailableError,
    "exec_timeout": ExecTimeoutError,
}


def make_error(
    code: str,
    message: str,
    cause: Optional[str] = None,
    remediation: Optional[str] = None,
    context: Optional[Mapping[str, Any]] = None,
    status: Optional[int] = None,
) -> MitosError:
    """Builds the error class that matches ``code`` (MitosError for an unknown code)."""
    cls = CLASS_BY_CODE.get(code, MitosError)
    return cls(code, message, cause=cause, remediation=remediation, context=context, status=status)


def code_for_status(status: int) -> str:
    """The API code for an HTTP status, when the body carries none."""
    return {
        400: "invalid_input",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        410: "idle_timeout",
        413: "body_too_large",
        429: "rate_limited",
        499: "canceled",
        502: "unavailable",
        503: "unavailable",
        504: "exec_timeout",
    }.get(status, "internal")


_CONNECT_TO_API = {
    "not_found": "not_found",
    "permission_denied": "forbidden",
    "unauthenticated": "unauthorized",
    "deadline_exceeded": "exec_timeout",
    "invalid_argument": "invalid_input",
    "failed_precondition": "conflict",
    "resource_exhausted": "quota_exceeded",
    "unavailable": "unavailable",
    "canceled": "canceled",
}


def code_for_connect(connect_code: Optional[str]) -> str:
    """The API code for a Connect code such as ``"not_found"`` or ``"invalid_argument"``."""
    return _CONNECT_TO_API.get(connect_code or "", "internal")


def error_from_envelope(status: int, body: Any) -> MitosError:
    """Turns a lifecycle HTTP error response into a typed error.

    ``body`` is the parsed JSON, or the raw text when it was not JSON (e.g. from a proxy).
    """
    env = body.get("error") if isinstance(body, dict) else None
    if not isinstance(env, dict):
        text = body[:200] if isinstance(body, str) else ""
        return make_error(
            code_for_status(status),
            "HTTP %d without an error envelope%s" % (status, ": " + text if text else ""),
            status=status,
        )
    raw_code = env.get("code")
    known = isinstance(raw_code, str) and raw_code in STATUS_BY_CODE
    context = dict(env["context"]) if isinstance(env.get("context"), dict) else {}
    if not known and raw_code is not None:
        # An unknown code (a newer server) is kept so nothing is lost.
        context["serverCode"] = raw_code
    message = env.get("message")
    remediation = env.get("remediation")
    cause = env.get("cause")
    return make_error(
        raw_code if known else code_for_status(status),
        message if isinstance(message, str) else "HTTP %d" % status,
        cause=cause if isinstance(cause, str) else None,
        remediation=remediation if isinstance(remediation, str) else None,
        context=context,
        status=status,
    )


def _first(meta: Optional[Mapping[str, Any]], key: str) -> Optional[str]:
    """A metadata value: headers map a name to a string, Connect end-stream metadata to a list of strings."""
    if not meta:
        return None
    for k, v in meta.items():
        if k.lower() != key:
            continue
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def error_from_connect(
    error: Any,
    metadata: Optional[Mapping[str, Any]] = None,
    headers: Optional[Mapping[str, Any]] = None,
) -> MitosError:
    """Maps a Connect error to the SDK's classes.

    ``error`` is the Connect error object ``{"code", "message"}`` (a unary error
    body or the ``error`` of an end-of-stream message); ``metadata`` the
    end-of-stream ``metadata`` (trailers) and ``headers`` the response headers.
    The API code comes from ``x-mitos-error-code`` in either, else from the
    Connect code.
    """
    err = error if isinstance(error, dict) else {}
    connect_code = err.get("code") if isinstance(err.get("code"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else ""
    header_code = None
    remediation = None
    for source in (metadata, headers):
        header_code = header_code or _first(source, ERROR_CODE_HEADER) or _first(source, "trailer-" + ERROR_CODE_HEADER)
        remediation = remediation or _first(source, REMEDIATION_HEADER) or _first(source, "trailer-" + REMEDIATION_HEADER)
    code = header_code if header_code in STATUS_BY_CODE else code_for_connect(connect_code)
    context: Dict[str, Any] = {"connectCode": connect_code or "unknown"}
    return make_error(code, message or connect_code or "runtime call failed", remediation=remediation, context=context)


def network_error(base_url: str, reason: Any) -> MitosError:
    """The server could not be reached at all."""
    return make_error(
        "unavailable",
        "cannot reach mitosd at %s" % base_url,
        cause=_describe(reason),
        remediation="Start the daemon with `mitos up` (or run mitosd), and check that MITOS_BASE_URL "
        "(now %s) points at it." % base_url,
        context={"baseUrl": base_url},
        status=0,
    )


def _describe(reason: Any) -> str:
    inner = getattr(reason, "reason", None)  # urllib.error.URLError wraps the socket error
    if isinstance(inner, BaseException):
        reason = inner
    if isinstance(reason, BaseException):
        name = type(reason).__name__
        text = str(reason)
        return "%s: %s" % (name, text) if text else name
    return str(reason)
