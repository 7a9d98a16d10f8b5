"""Public shapes of the API's objects, in snake_case (as on the lifecycle
wire), with just enough checking that a wrong server fails loudly instead of
handing out ``None`` ids."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import MitosError, make_error


@dataclass(frozen=True)
class MemoryUsage:
    #: Pages only this sandbox holds (its copy-on-write copies and VMM heap).
    private_bytes: int
    #: Base pages it still shares with its template and siblings.
    shared_bytes: int


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    template_id: str
    #: The sandbox this one was forked from; None when made from a template.
    parent_id: Optional[str]
    #: "starting", "ready", "paused", "terminated" or "failed".
    state: str
    endpoint: Optional[str]
    #: ISO 8601.
    created_at: str
    #: When mitosd reaps it (Unix seconds).
    deadline_unix: Optional[int]
    fork_time_ms: float
    #: "kvm" or "tcg".
    accel: Optional[str]
    memory: Optional[MemoryUsage]
    #: Paused with its memory freed (saved to disk): pause(hibernate=True), or mitosd's idle timer.
    hibernated: bool = False
    #: Its network policy ``{"egress", "allow_out", "deny_out"}``; None: no network device (docs/network.md).
    network: Optional[Dict[str, Any]] = None
    #: ``<domain>:<port>``: guest port N is served as host ``N-<id>.<domain>`` (docs/ports.md).
    domain: Optional[str] = None
    #: The tenant it belongs to; None: an admin's (docs/security.md "Keys").
    tenant: Optional[str] = None
    #: Reaches this sandbox's runtime API only (exec, files, PTY, ports): hand it to an agent inside.
    token: Optional[str] = None
    #: May only fork this sandbox; the fork's answer carries the children's tokens.
    fork_token: Optional[str] = None


@dataclass(frozen=True)
class TemplateInfo:
    id: str
    ready: bool
    created_at: str
    creation_time_ms: float
    # A key of everything that shaped it: a changed input is a new version.
    version: Optional[str] = None
    # How many init steps it ran.
    steps: Optional[int] = None


@dataclass(frozen=True)
class CheckpointInfo:
    """A sandbox saved to mitosd's disk store. ``bytes``: compressed bytes of
    every chunk it names; ``added_bytes``: of those, what it added (the rest is
    shared with earlier checkpoints)."""

    id: str
    name: Optional[str]
    sandbox_id: str
    template_id: str
    created_at: str
    bytes: int
    added_bytes: int


@dataclass(frozen=True)
class Health:
    status: str
    version: str
    accel: Optional[str]
    templates: int
    sandboxes: int
    #: "none" when mitosd runs with --auth none (loopback only), else "token".
    auth: str = "token"


@dataclass(frozen=True)
class TimeoutInfo:
    deadline_unix: int
    timeout_seconds: int


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    is_dir: bool
    size: int
    #: Permission and type bits.
    mode: int
    modified_at_unix: int


@dataclass
class ExecResult:
    #: 124 when the command was killed at its deadline.
    exit_code: int
    stdout: str
    stderr: str
    exec_time_ms: int
    #: Set when the guest reported a problem running the command.
    error: Optional[str] = field(default=None)


#: MIME types with an attribute of their own on Result (as E2B names them).
RESULT_KEYS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}


@dataclass
class Result:
    """One output of a cell: its value (``is_main_result``) or a display such as a plot."""

    is_main_result: bool
    #: Every representation by MIME type; images are base64 text.
    data: Dict[str, str]
    text: Optional[str] = None
    html: Optional[str] = None
    markdown: Optional[str] = None
    svg: Optional[str] = None
    #: Base64 PNG.
    png: Optional[str] = None
    #: Base64 JPEG.
    jpeg: Optional[str] = None
    pdf: Optional[str] = None
    latex: Optional[str] = None
    #: application/json, as JSON text.
    json: Optional[str] = None
    javascript: Optional[str] = None

    def formats(self) -> List[str]:
        """The MIME types this result carries."""
        return list(self.data)

    @classmethod
    def from_data(cls, data: Dict[str, str], is_main_result: bool) -> "Result":
        named = {RESULT_KEYS[m]: v for m, v in data.items() if m in RESULT_KEYS}
        return cls(is_main_result=is_main_result, data=data, **named)


@dataclass
class ExecutionError:
    #: The exception's class, e.g. "ZeroDivisionError"; "TimeoutError" at the cell's timeout.
    name: str
    value: str
    traceback: str


@dataclass
class Logs:
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class Execution:
    """A cell's outcome, shaped as E2B's code interpreter returns it."""

    results: List[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: Optional[ExecutionError] = None
    #: 0 ok, 1 the code raised, 124 interrupted at its timeout, 127 no kernel in this sandbox.
    exit_code: int = -1

    @property
    def text(self) -> Optional[str]:
        """The cell's value as text (its main result), if it had one."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None


@dataclass(frozen=True)
class CodeContext:
    """An independent kernel in a sandbox."""

    id: str
    language: str
    cwd: str


def bad(what: str, value: Any) -> MitosError:
    try:
        text = json.dumps(value)[:300]
    except (TypeError, ValueError):
        text = repr(value)[:300]
    return make_error(
        "internal",
        "unexpected %s from mitosd" % what,
        cause=text,
        remediation="The server's answer does not match the API this SDK speaks. "
        "Check that mitosd and mitos-run versions match.",
    )


def record(what: str, v: Any) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise bad(what, v)
    return v


def array(what: str, v: Any) -> List[Any]:
    if not isinstance(v, list):
        raise bad(what, v)
    return v


def _num(o: Dict[str, Any], key: str) -> Any:
    v = o.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _opt_str(o: Dict[str, Any], key: str) -> Optional[str]:
    v = o.get(key)
    return v if isinstance(v, str) else None


def to_sandbox_info(v: Any) -> SandboxInfo:
    o = record("sandbox", v)
    sid = o.get("id")
    if not isinstance(sid, str):
        raise bad("sandbox.id", v)
    mem = o.get("memory")
    deadline = o.get("deadline_unix")
    accel = _opt_str(o, "accel")
    return SandboxInfo(
        id=sid,
        template_id=_opt_str(o, "template_id") or "",
        parent_id=_opt_str(o, "parent_id"),
        state=_opt_str(o, "state") or "ready",
        endpoint=_opt_str(o, "endpoint"),
        created_at=_opt_str(o, "created_at") or "",
        deadline_unix=int(deadline) if isinstance(deadline, (int, float)) and not isinstance(deadline, bool) else None,
        fork_time_ms=_num(o, "fork_time_ms"),
        accel=accel if accel in ("kvm", "tcg") else None,
        memory=MemoryUsage(int(_num(mem, "private_bytes")), int(_num(mem, "shared_bytes"))) if isinstance(mem, dict) else None,
        hibernated=o.get("hibernated") is True,
        network=dict(o["network"]) if isinstance(o.get("network"), dict) else None,
        domain=_opt_str(o, "domain"),
        tenant=_opt_str(o, "tenant"),
        token=_opt_str(o, "token"),
        fork_token=_opt_str(o, "fork_token"),
    )


def to_checkpoint_info(v: Any) -> CheckpointInfo:
    o = record("checkpoint", v)
    cid = o.get("id")
    if not isinstance(cid, str):
        raise bad("checkpoint.id", v)
    return CheckpointInfo(
        id=cid,
        name=_opt_str(o, "name"),
        sandbox_id=_opt_str(o, "sandbox_id") or "",
        template_id=_opt_str(o, "template_id") or "",
        created_at=_opt_str(o, "created_at") or "",
        bytes=int(_num(o, "bytes")),
        added_bytes=int(_num(o, "added_bytes")),
    )


def to_template_info(v: Any) -> TemplateInfo:
    o = record("template", v)
    tid = o.get("id")
    if not isinstance(tid, str):
        raise bad("template.id", v)
    return TemplateInfo(
        id=tid,
        ready=o.get("ready") is True,
        created_at=_opt_str(o, "created_at") or "",
        creation_time_ms=_num(o, "creation_time_ms"),
        version=_opt_str(o, "version"),
        steps=o["steps"] if isinstance(o.get("steps"), int) else None,
    )


def to_health(v: Any) -> Health:
    o = record("health", v)
    return Health(
        status=_opt_str(o, "status") or "",
        version=_opt_str(o, "version") or "",
        accel=_opt_str(o, "accel"),
        templates=int(_num(o, "templates")),
        sandboxes=int(_num(o, "sandboxes")),
        auth=_opt_str(o, "auth") or "token",
    )


def to_timeout_info(v: Any) -> TimeoutInfo:
    o = record("set_timeout answer", v)
    return TimeoutInfo(deadline_unix=int(_num(o, "deadline_unix")), timeout_seconds=int(_num(o, "timeout_seconds")))


def to_file_info(v: Any) -> FileInfo:
    o = record("file info", v)

    def i64(key: str) -> int:
        x = o.get(key)
        return int(x) if isinstance(x, (str, int, float)) and not isinstance(x, bool) and x != "" else 0

    return FileInfo(
        name=_opt_str(o, "name") or "",
        path=_opt_str(o, "path") or "",
        is_dir=o.get("isDir") is True,
        size=i64("size"),
        mode=i64("mode"),
        modified_at_unix=i64("modifiedAtUnix"),
    )


def to_code_context(v: Any) -> CodeContext:
    o = record("code context", v)
    try:
        return CodeContext(id=str(o["id"]), language=str(o["language"]), cwd=str(o["cwd"]))
    except KeyError:
        raise bad("code context", v) from None
