"""The runtime client: the Connect protocol (connectrpc.com) over HTTP/1.1
with the JSON codec, by hand, against ``sandbox.v1.Sandbox``.

- Unary: ``POST /sandbox.v1.Sandbox/<Method>``, ``application/json``; an
  error is a non-200 answer with ``{"code", "message"}`` and the API code in
  the ``x-mitos-error-code`` header.
- Streams: ``application/connect+json``; each message is an envelope of one
  flag byte, a 4-byte big-endian length and JSON. The last envelope has flag
  0x02 and carries ``{}`` or ``{"error": {...}, "metadata": {...}}``.
- The target sandbox goes in ``X-Sandbox-Id``; ``bytes`` fields are base64,
  ``int64`` fields arrive as strings.
"""

from __future__ import annotations

import base64
import codecs
import json
import struct
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from ._config import Config
from ._http import USER_AGENT, open_url, parse_body
from ._types import Execution, ExecutionError, Result
from .errors import MitosError, error_from_connect, error_from_envelope, make_error, network_error

SERVICE = "sandbox.v1.Sandbox"
SANDBOX_ID_HEADER = "X-Sandbox-Id"

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02

#: Bytes per WriteFile message; base64 adds a third on the wire.
WRITE_CHUNK = 256 * 1024

_HEADER = struct.Struct(">BI")


def encode_envelope(message: Mapping[str, Any], flags: int = 0) -> bytes:
    """One Connect envelope: flag byte, 4-byte big-endian length, JSON."""
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(flags, len(data)) + data


def read_envelope(read: Callable[[int], bytes]) -> Optional[Tuple[int, bytes]]:
    """Reads one envelope with ``read(n)``; None at a clean end of input."""
    head = _read_exact(read, 5)
    if not head:
        return None
    if len(head) < 5:
        raise _protocol("truncated envelope header")
    flags, length = _HEADER.unpack(head)
    data = _read_exact(read, length)
    if len(data) < length:
        raise _protocol("truncated envelope: expected %d bytes, got %d" % (length, len(data)))
    if flags & FLAG_COMPRESSED:
        raise _protocol("compressed envelope, but no compression was negotiated")
    return flags, data


def decode_envelopes(data: bytes) -> List[Tuple[int, Any]]:
    """Splits a whole body into ``(flags, parsed JSON)`` pairs."""
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += len(chunk)
        return chunk

    out: List[Tuple[int, Any]] = []
    while True:
        env = read_envelope(read)
        if env is None:
            return out
        out.append((env[0], _json(env[1])))


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8")) if data else {}
    except ValueError as e:
        raise _protocol("malformed JSON in a message: %s" % e) from None


def _protocol(message: str) -> MitosError:
    return make_error(
        "internal",
        "Connect protocol error: " + message,
        remediation="The server's answer does not match the protocol this SDK speaks. "
        "Check that mitosd and the SDK versions match.",
    )


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: Any) -> bytes:
    if not value:
        return b""
    # Connect's JSON accepts standard and URL-safe base64, padded or not.
    s = str(value).replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4))


def int64(value: Any) -> int:
    """int64/uint64 fields come as JSON strings; tolerate numbers and absence."""
    if value is None or value == "":
        return 0
    return int(value)


def end_stream_error(end: Any, headers: Optional[Mapping[str, str]] = None) -> Optional[MitosError]:
    """The error carried by an end-of-stream message, if any."""
    if not isinstance(end, dict) or not isinstance(end.get("error"), dict):
        return None
    meta = end.get("metadata") if isinstance(end.get("metadata"), dict) else None
    return error_from_connect(end["error"], metadata=meta, headers=headers)


def _headers_dict(headers: Any) -> Dict[str, str]:
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}


class StreamText:
    """Collects one output stream as text; a UTF-8 character split across
    chunks is held until it is complete."""

    def __init__(self, on_chunk: Optional[Callable[[str], Any]] = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: List[str] = []
        self._on_chunk = on_chunk

    def push(self, data: bytes) -> None:
        s = self._decoder.decode(data)
        if s:
            self._parts.append(s)
            if self._on_chunk is not None:
                self._on_chunk(s)

    def end(self) -> str:
        rest = self._decoder.decode(b"", final=True)
        if rest:
            self._parts.append(rest)
            if self._on_chunk is not None:
                self._on_chunk(rest)
        return "".join(self._parts)


class ConnectClient:
    """Connect calls against one mitosd; every call names its sandbox."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def _url(self, method: str) -> str:
        return "%s/%s/%s" % (self.config.base_url, SERVICE, method)

    def _headers(self, sandbox_id: str, content_type: str) -> Dict[str, str]:
        h = {
            "Content-Type": content_type,
            "Connect-Protocol-Version": "1",
            "User-Agent": USER_AGENT,
            SANDBOX_ID_HEADER: sandbox_id,
        }
        if content_type == "application/connect+json":
            h["Accept"] = content_type
        if self.config.api_key:
            h["Authorization"] = "Bearer " + self.config.api_key
        return h

    def _open(self, method: str, sandbox_id: str, content_type: str, body: bytes, timeout: Optional[float]) -> Any:
        req = urllib.request.Request(self._url(method), data=body, headers=self._headers(sandbox_id, content_type), method="POST")
        try:
            return open_url(req, timeout)
        except urllib.error.HTTPError as e:
            try:
                raw = e.read()
            finally:
                e.close()
            raise _http_error(e.code, parse_body(raw), _headers_dict(e.headers)) from None
        except (urllib.error.URLError, OSError) as e:
            raise network_error(self.config.base_url, e) from None

    def unary(self, method: str, sandbox_id: str, request: Mapping[str, Any]) -> Dict[str, Any]:
        body = json.dumps(request, separators=(",", ":")).encode("utf-8")
        res = self._open(method, sandbox_id, "application/json", body, self.config.timeout)
        try:
            raw = res.read()
        except OSError as e:
            raise network_error(self.config.base_url, e) from None
        finally:
            res.close()
        parsed = parse_body(raw)
        if parsed is None:
            return {}
        if not isinstance(parsed, dict):
            raise _protocol("%s answered with something other than a JSON object" % method)
        return parsed

    def server_stream(self, method: str, sandbox_id: str, request: Mapping[str, Any]) -> Iterator[Dict[str, Any]]:
        """Yields each message; raises the end-of-stream error, if any."""
        return self._stream(method, sandbox_id, encode_envelope(request))

    def client_stream(self, method: str, sandbox_id: str, messages: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
        """Sends all messages in one request body and returns the one answer."""
        body = b"".join(encode_envelope(m) for m in messages)
        answers = list(self._stream(method, sandbox_id, body))
        if len(answers) != 1:
            raise _protocol("%s answered with %d messages, expected 1" % (method, len(answers)))
        return answers[0]

    def _stream(self, method: str, sandbox_id: str, body: bytes) -> Iterator[Dict[str, Any]]:
        # Streams may stay quiet for as long as the command runs: no read timeout.
        res = self._open(method, sandbox_id, "application/connect+json", body, None)
        headers = _headers_dict(res.headers)
        try:
            while True:
                try:
                    env = read_envelope(res.read)
                except OSError as e:
                    raise _stream_lost(self.config.base_url, method, sandbox_id, e) from None
                if env is None:
                    raise _stream_lost(self.config.base_url, method, sandbox_id, "no end-of-stream message")
                flags, data = env
                msg = _json(data)
                if flags & FLAG_END_STREAM:
                    err = end_stream_error(msg, headers)
                    if err is not None:
                        raise err
                    return
                if not isinstance(msg, dict):
                    raise _protocol("%s sent a message that is not a JSON object" % method)
                yield msg
        finally:
            res.close()

    # --- sandbox.v1.Sandbox ---------------------------------------------

    def exec(
        self,
        sandbox_id: str,
        command: str,
        args: Optional[List[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[int] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
    ) -> Dict[str, Any]:
        out = StreamText(on_stdout)
        err = StreamText(on_stderr)
        request = {
            "command": command,
            "args": [command] + list(args) if args is not None else [],
            "env": [{"key": str(k), "value": str(v)} for k, v in (env or {}).items()],
            "cwd": cwd or "",
            "timeoutSeconds": int(timeout or 0),
        }
        for msg in self.server_stream("ExecStream", sandbox_id, request):
            if "stdout" in msg and msg["stdout"] is not None:
                out.push(b64decode(msg["stdout"]))
            elif "stderr" in msg and msg["stderr"] is not None:
                err.push(b64decode(msg["stderr"]))
            elif isinstance(msg.get("exit"), dict):
                ex = msg["exit"]
                return {
                    "exit_code": int(ex.get("exitCode") or 0),
                    "stdout": out.end(),
                    "stderr": err.end(),
                    "exec_time_ms": int(ex.get("execTimeMs") or 0),
                    "error": ex.get("error") or None,
                }
        raise make_error(
            "internal",
            "exec stream ended without an exit status",
            context={"sandboxId": sandbox_id, "stdout": out.end(), "stderr": err.end()},
        )

    def run_code(
        self,
        sandbox_id: str,
        code: str,
        language: Optional[str] = None,
        context_id: Optional[str] = None,
        timeout: Optional[int] = None,
        envs: Optional[Mapping[str, str]] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        on_result: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[ExecutionError], Any]] = None,
    ) -> Execution:
        request = {
            "code": code,
            "language": language or "",
            "timeoutSeconds": int(timeout or 0),
            "contextId": context_id or "",
            "env": [{"key": str(k), "value": str(v)} for k, v in (envs or {}).items()],
        }
        out = Execution()
        for msg in self.server_stream("RunCodeStream", sandbox_id, request):
            if msg.get("stdout") is not None or msg.get("stderr") is not None:
                name = "stdout" if msg.get("stdout") is not None else "stderr"
                text = b64decode(msg[name]).decode("utf-8", "replace")
                getattr(out.logs, name).append(text)
                cb = on_stdout if name == "stdout" else on_stderr
                if cb is not None:
                    cb(text)
            elif isinstance(msg.get("result"), dict):
                r = msg["result"]
                raw = r.get("data") if isinstance(r.get("data"), dict) else {}
                data = {str(m): b64decode(v).decode("utf-8", "replace") for m, v in raw.items()}
                # Upstream's rule: a non-empty text marks the cell's value.
                result = Result.from_data(data, bool(r.get("text")))
                out.results.append(result)
                if on_result is not None:
                    on_result(result)
            elif isinstance(msg.get("error"), dict):
                e = msg["error"]
                tb = e.get("traceback") if isinstance(e.get("traceback"), list) else []
                out.error = ExecutionError(
                    name=str(e.get("name") or ""), value=str(e.get("value") or ""), traceback="\n".join(map(str, tb))
                )
                if on_error is not None:
                    on_error(out.error)
            elif "exitCode" in msg:
                out.exit_code = int(msg.get("exitCode") or 0)
                return out
        raise make_error(
            "internal",
            "run_code stream ended without an exit code",
            context={"sandboxId": sandbox_id, "stdout": "".join(out.logs.stdout), "stderr": "".join(out.logs.stderr)},
        )

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        chunks: List[bytes] = []
        for msg in self.server_stream("ReadFile", sandbox_id, {"path": path}):
            data = b64decode(msg.get("data"))
            if data:
                chunks.append(data)
            if msg.get("eof"):
                break
        return b"".join(chunks)

    def write_file(self, sandbox_id: str, path: str, data: bytes, mode: int = 0) -> int:
        def messages() -> Iterator[Dict[str, Any]]:
            yield {"open": {"path": path, "mode": int(mode)}}
            for i in range(0, len(data), WRITE_CHUNK):
                yield {"data": b64encode(data[i : i + WRITE_CHUNK])}

        res = self.client_stream("WriteFile", sandbox_id, messages())
        return int64(res.get("bytesWritten"))

    def list(self, sandbox_id: str, parent: str) -> List[Dict[str, Any]]:
        res = self.unary("List", sandbox_id, {"parent": parent})
        entries = res.get("entries") or []
        return [e for e in entries if isinstance(e, dict)]

    def stat(self, sandbox_id: str, path: str) -> Dict[str, Any]:
        return self.unary("Stat", sandbox_id, {"path": path})

    def mkdir(self, sandbox_id: str, path: str) -> None:
        self.unary("Mkdir", sandbox_id, {"path": path})

    def remove(self, sandbox_id: str, path: str, recursive: Optional[bool] = None, strict: bool = False) -> None:
        body: Dict[str, Any] = {"path": path, "strict": bool(strict)}
        if recursive is not None:
            body["recursive"] = bool(recursive)
        self.unary("Remove", sandbox_id, body)

    def processes(self, sandbox_id: str) -> List[Dict[str, Any]]:
        res = self.unary("Processes", sandbox_id, {})
        return [p for p in (res.get("processes") or []) if isinstance(p, dict)]

    def signal(self, sandbox_id: str, pid: int, signal: int) -> None:
        self.unary("Signal", sandbox_id, {"pid": int(pid), "signal": int(signal)})


def _http_error(status: int, body: Any, headers: Mapping[str, str]) -> MitosError:
    """A non-200 answer: a Connect error ``{"code","message"}``, or (from a
    route outside Connect) the API's own envelope."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from_envelope(status, body)
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        # status: the API code's own (as for streams), not the Connect HTTP mapping.
        return error_from_connect(body, headers=headers)
    return error_from_envelope(status, body)


def _stream_lost(base_url: str, method: str, sandbox_id: str, cause: Any) -> Exception:
    """A stream mitosd had answered broke off (mitosd restarted or died): the work may go on in the sandbox."""
    return make_error(
        "unavailable",
        "the connection to mitosd at %s was lost during %s in sandbox %s" % (base_url, method, sandbox_id),
        cause=str(cause),
        remediation="The command may still be running in the sandbox (a restarted mitosd keeps sandboxes running). "
        "Check it with get() or processes() before running it again.",
    )
