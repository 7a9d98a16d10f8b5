"""The lifecycle API client (JSON over urllib). Every request carries the
bearer token; creating POSTs carry an Idempotency-Key that stays the same
across this client's own retries, so a retried fork never makes a second
sandbox."""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Dict, Optional

from ._config import Config
from .errors import MitosError, error_from_envelope, make_error, network_error

USER_AGENT = "mitos-sdk-python/0.1.0"

RETRY_BASE_S = 0.2
RETRY_AFTER_CAP_S = 5.0

# No proxies: mitosd is normally on loopback, and an HTTP(S)_PROXY in the
# environment must not swallow its calls.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def open_url(req: urllib.request.Request, timeout: Optional[float]) -> Any:
    return _opener.open(req, timeout=timeout)


class HttpClient:
    def __init__(self, config: Config) -> None:
        self.config = config

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Dict[str, Any], create: bool = False, idempotency_key: Optional[str] = None) -> Any:
        return self.request("POST", path, body, create=create, idempotency_key=idempotency_key)

    def put(self, path: str, body: Dict[str, Any]) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        create: bool = False,
        idempotency_key: Optional[str] = None,
    ) -> Any:
        url = self.config.base_url + path
        headers = self._headers("application/json", body is not None)
        payload = None if body is None else json.dumps(body).encode("utf-8")
        key = idempotency_key or (str(uuid.uuid4()) if create else None)
        if key:
            headers["Idempotency-Key"] = key

        attempt = 0
        while True:
            last = attempt >= self.config.max_retries
            req = urllib.request.Request(url, data=payload, headers=headers, method=method)
            try:
                with open_url(req, self.config.timeout) as res:
                    return parse_body(res.read())
            except urllib.error.HTTPError as e:
                try:
                    raw = e.read()
                finally:
                    e.close()
                error = error_from_envelope(e.code, parse_body(raw))
                if not last and _retryable(error, attempt, key):
                    time.sleep(_retry_after(e.headers) or _backoff(attempt))
                    attempt += 1
                    continue
                raise error from None
            except (urllib.error.URLError, OSError) as e:
                # A refused connection never reached the server: safe to retry
                # any call. Other failures may have reached it: only reads and
                # keyed calls.
                safe = is_refused(e) or method == "GET" or key is not None
                if last or not safe:
                    raise network_error(self.config.base_url, e) from None
                time.sleep(_backoff(attempt))
                attempt += 1


    def _headers(self, accept: str, with_body: bool) -> Dict[str, str]:
        """What every call sends: what it accepts, who asks, the bearer token and, with a body, its type."""
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if self.config.api_key:
            headers["Authorization"] = "Bearer " + self.config.api_key
        if with_body:
            headers["Content-Type"] = "application/json"
        return headers

    def post_lines(self, path: str, body: Dict[str, Any], on_line: Callable[[Any], None]) -> None:
        """A POST whose answer streams JSON lines (``application/x-ndjson``):
        each line goes to ``on_line`` as it arrives. Not retried (a build log
        cannot be replayed); an error before the stream starts is raised."""
        headers = self._headers("application/x-ndjson", True)
        req = urllib.request.Request(
            self.config.base_url + path, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with open_url(req, self.config.timeout) as res:
                for raw in res:
                    line = raw.strip()
                    if line:
                        on_line(json.loads(line))
        except urllib.error.HTTPError as e:
            try:
                raw_body = e.read()
            finally:
                e.close()
            raise error_from_envelope(e.code, parse_body(raw_body)) from None
        except (urllib.error.URLError, OSError) as e:
            raise network_error(self.config.base_url, e) from None


def _retryable(error: MitosError, attempt: int, key: Optional[str]) -> bool:
    if error.code in ("rate_limited", "too_many_streams"):
        return True
    # Our earlier attempt with this key may still be running on the server.
    return error.code == "conflict" and attempt > 0 and key is not None


def parse_body(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def is_refused(err: BaseException) -> bool:
    reason = getattr(err, "reason", err)
    return isinstance(reason, ConnectionRefusedError)


def is_network_error(err: BaseException) -> bool:
    return isinstance(err, (urllib.error.URLError, ConnectionError, socket.timeout, OSError)) and not isinstance(
        err, urllib.error.HTTPError
    )


def _backoff(attempt: int) -> float:
    return RETRY_BASE_S * (2**attempt) * (0.75 + random.random() * 0.5)


def _retry_after(headers: Any) -> Optional[float]:
    try:
        s = float(headers.get("Retry-After") or "")
    except (TypeError, ValueError):
        return None
    return min(s, RETRY_AFTER_CAP_S) if s > 0 else None


def invalid(message: str, remediation: Optional[str] = None) -> MitosError:
    return make_error("invalid_input", message, remediation=remediation)
