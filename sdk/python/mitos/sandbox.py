"""A sandbox handle: lifecycle calls go to the REST API, exec and files to the
runtime service. Fields mirror the server's sandbox object and are refreshed
by info() and by the calls that change them."""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ._types import (
    CheckpointInfo,
    CodeContext,
    ExecResult,
    Execution,
    ExecutionError,
    FileInfo,
    MemoryUsage,
    Result,
    SandboxInfo,
    TimeoutInfo,
    array,
    record,
    to_checkpoint_info,
    to_code_context,
    to_file_info,
    to_sandbox_info,
    to_timeout_info,
)
from .errors import NotFoundError, SandboxExpiredError, make_error

if TYPE_CHECKING:  # pragma: no cover
    from ._connect import ConnectClient
    from ._http import HttpClient


class Sandbox:
    """One microVM. Use it as a context manager to terminate it on exit::

        with mitos.create("python") as sb:
            print(sb.exec("uname -a").stdout)
    """

    def __init__(self, http: "HttpClient", runtime: "ConnectClient", info: SandboxInfo) -> None:
        self._http = http
        self._runtime = runtime
        self._info = info
        self.files = SandboxFiles(runtime, info.id)

    # --- fields -----------------------------------------------------------

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def template_id(self) -> str:
        return self._info.template_id

    @property
    def parent_id(self) -> Optional[str]:
        return self._info.parent_id

    @property
    def state(self) -> str:
        return self._info.state

    @property
    def endpoint(self) -> Optional[str]:
        return self._info.endpoint

    @property
    def created_at(self) -> str:
        return self._info.created_at

    @property
    def deadline_unix(self) -> Optional[int]:
        return self._info.deadline_unix

    @property
    def fork_time_ms(self) -> float:
        return self._info.fork_time_ms

    @property
    def accel(self) -> Optional[str]:
        return self._info.accel

    @property
    def memory(self) -> Optional[MemoryUsage]:
        return self._info.memory

    @property
    def tenant(self) -> Optional[str]:
        """The tenant it belongs to; None: an admin's."""
        return self._info.tenant

    @property
    def token(self) -> Optional[str]:
        """Its own access token: this sandbox's runtime API only; None when this handle was opened with it."""
        return self._info.token

    @property
    def fork_token(self) -> Optional[str]:
        """A token that may only fork this sandbox (an agent inside can fork itself with it)."""
        return self._info.fork_token

    @property
    def hibernated(self) -> bool:
        """Paused with its memory freed (saved to disk); resume() restores it."""
        return self._info.hibernated

    def __repr__(self) -> str:
        return "Sandbox(id=%r, template_id=%r, state=%r)" % (self.id, self.template_id, self.state)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.terminate()
        except (NotFoundError, SandboxExpiredError):
            pass  # already gone

    @property
    def _path(self) -> str:
        return "/v1/sandboxes/" + urllib.parse.quote(self.id, safe="")

    # --- runtime ------------------------------------------------------------

    def exec(
        self,
        cmd: str,
        timeout: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        args: Optional[Sequence[str]] = None,
    ) -> ExecResult:
        """Runs ``cmd`` with ``/bin/sh -c`` and waits for it to exit.

        ``timeout`` is the server-side deadline in seconds (a command killed at
        it exits with 124; above the server's ceiling: TimeoutTooLargeError).
        ``on_stdout``/``on_stderr`` get text chunks as they arrive. With
        ``args`` (even ``[]``), runs argv ``[cmd, *args]`` directly, without a shell.
        Never retried.
        """
        r = self._runtime.exec(
            self.id,
            cmd,
            args=list(args) if args is not None else None,
            env=env,
            cwd=cwd,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        return ExecResult(**r)

    def run_code(
        self,
        code: str,
        language: Optional[str] = None,
        context: Union[str, CodeContext, None] = None,
        timeout: Optional[int] = None,
        envs: Optional[Mapping[str, str]] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        on_result: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[ExecutionError], Any]] = None,
    ) -> Execution:
        """Runs a cell in the sandbox's Jupyter kernel (python template).

        Variables persist between calls, and forks inherit them. The last
        expression's value is ``execution.text``; plots come as results with
        ``png``. ``timeout`` interrupts the cell (exit_code 124, TimeoutError)
        and the context keeps its variables. Never retried.
        """
        return self._runtime.run_code(
            self.id,
            code,
            language=language,
            context_id=context.id if isinstance(context, CodeContext) else context,
            timeout=timeout,
            envs=envs,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            on_result=on_result,
            on_error=on_error,
        )

    def create_code_context(self, language: Optional[str] = None, cwd: Optional[str] = None) -> CodeContext:
        """Starts another kernel in this sandbox, with variables of its own."""
        body: Dict[str, Any] = {}
        if language:
            body["language"] = language
        if cwd:
            body["cwd"] = cwd
        return to_code_context(self._http.post(self._path + "/contexts", body))

    def list_code_contexts(self) -> List[CodeContext]:
        return [to_code_context(c) for c in array("contexts", self._http.get(self._path + "/contexts"))]

    def restart_code_context(self, context: Union[str, CodeContext]) -> None:
        """A fresh kernel under the same id: the context's variables are gone."""
        self._http.post(self._context_path(context) + "/restart", {})

    def remove_code_context(self, context: Union[str, CodeContext]) -> None:
        self._http.delete(self._context_path(context))

    def _context_path(self, context: Union[str, CodeContext]) -> str:
        cid = context.id if isinstance(context, CodeContext) else context
        return self._path + "/contexts/" + urllib.parse.quote(cid, safe="")

    def processes(self) -> List[Dict[str, Any]]:
        """Processes in the guest: ``[{pid, ppid, command, state, rssBytes}]``."""
        return self._runtime.processes(self.id)

    def signal(self, pid: int, signal: int) -> None:
        """Sends ``signal`` to the guest process ``pid``."""
        self._runtime.signal(self.id, pid, signal)

    # --- lifecycle ----------------------------------------------------------

    def fork(self, count: int = 1, pause_source: Optional[bool] = None) -> List["Sandbox"]:
        """Forks this sandbox into ``count`` children with one request: one
        pause of the source, one capture, ``count`` copy-on-write children.
        The source is resumed after the capture; ``pause_source`` is the public
        API's flag, sent when given, with the same meaning."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise make_error(
                "invalid_input",
                "fork count must be a positive integer, got %r" % (count,),
                remediation="Pass the number of children to create, e.g. fork(8).",
            )
        body: Dict[str, Any] = {"count": count}
        if pause_source is not None:
            body["pause_source"] = bool(pause_source)
        res = self._http.post(self._path + "/fork", body, create=True)
        if isinstance(res, dict) and "id" in res and "sandboxes" not in res:
            # A server that ignores `count` answers with one sandbox object.
            infos = [to_sandbox_info(res)]
        else:
            infos = [to_sandbox_info(s) for s in array("fork answer sandboxes", record("fork answer", res).get("sandboxes"))]
        return [Sandbox(self._http, self._runtime, info) for info in infos]

    def checkpoint(self, name: Optional[str] = None) -> CheckpointInfo:
        """Saves this sandbox (memory, processes, files) to mitosd's disk store
        with one short pause; it runs on. Create or fork from it any time
        later, also after a restart (``SandboxServer.from_checkpoint`` /
        ``fork_checkpoint``)."""
        body: Dict[str, Any] = {} if name is None else {"name": name}
        return to_checkpoint_info(self._http.post(self._path + "/checkpoints", body, create=True))

    @property
    def network(self) -> Optional[Dict[str, Any]]:
        """Its network policy; None: no network device."""
        return self._info.network

    def get_host(self, port: int) -> str:
        """The ``host:port`` at which mitosd serves guest port ``port``
        (``<port>-<id>.<domain>:<mitosd port>``; no NIC needed). Requests carry
        the API token, or the port's token from ``expose``."""
        if not self._info.domain:
            raise make_error(
                "unavailable", "the server named no port domain", remediation="Use the path URL from expose(port)."
            )
        return "%d-%s.%s" % (port, self.id, self._info.domain)

    def expose(self, port: int) -> Dict[str, Any]:
        """Makes guest port ``port`` reachable with a token of its own:
        ``{"url", "host", "token", "token_header", ...}``."""
        path = "/v1/sandboxes/%s/expose/%d" % (urllib.parse.quote(self.id, safe=""), port)
        return dict(record("exposed port", self._http.post(path, {})))

    def set_network(
        self, egress: str = "deny", allow_out: Optional[Sequence[str]] = None, deny_out: Optional[Sequence[str]] = None
    ) -> None:
        """Replaces the network policy; it takes effect at once (connections already open stay)."""
        body = {"egress": egress, "allow_out": list(allow_out or []), "deny_out": list(deny_out or [])}
        self._info = to_sandbox_info(self._http.put("/v1/sandboxes/%s/network" % urllib.parse.quote(self.id, safe=""), body))

    def set_timeout(self, seconds: int) -> TimeoutInfo:
        """Sets the deadline to ``seconds`` from now; refused
        (TimeoutTooLargeError) above the server's ceiling, never clamped."""
        t = to_timeout_info(self._http.post("/v1/set_timeout", {"sandbox": self.id, "timeout_seconds": seconds}))
        self._info = dataclasses.replace(self._info, deadline_unix=t.deadline_unix)
        return t

    def pause(self, hibernate: bool = False) -> None:
        """Pauses the sandbox. With ``hibernate`` its RAM is freed as well
        (saved to disk); ``resume()`` restores it with its processes and files."""
        body: Dict[str, Any] = {"sandbox": self.id}
        if hibernate:
            body["hibernate"] = True
        self._http.post("/v1/pause", body)
        self._info = dataclasses.replace(self._info, state="paused", hibernated=hibernate)

    def resume(self) -> None:
        self._http.post("/v1/resume", {"sandbox": self.id})
        self._info = dataclasses.replace(self._info, state="ready", hibernated=False)

    def terminate(self) -> None:
        self._http.delete(self._path)
        self._info = dataclasses.replace(self._info, state="terminated")

    def info(self) -> SandboxInfo:
        """Fetches the sandbox object again and updates this handle's fields."""
        self._info = to_sandbox_info(self._http.get(self._path))
        return self._info

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self._info)


class SandboxFiles:
    """File operations inside one sandbox."""

    def __init__(self, runtime: "ConnectClient", sandbox_id: str) -> None:
        self._runtime = runtime
        self._id = sandbox_id

    def read(self, path: str) -> bytes:
        """The file's bytes."""
        return self._runtime.read_file(self._id, path)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The file decoded (UTF-8 by default)."""
        return self.read(path).decode(encoding)

    def write(self, path: str, data: Union[str, bytes, bytearray, memoryview], mode: int = 0) -> int:
        """Creates or replaces the file; str is written as UTF-8. ``mode``: permission bits (0 means 0644).
        Returns the bytes written."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return self._runtime.write_file(self._id, path, raw, mode)

    def list(self, path: str) -> List[FileInfo]:
        return [to_file_info(e) for e in self._runtime.list(self._id, path)]

    def stat(self, path: str) -> FileInfo:
        return to_file_info(self._runtime.stat(self._id, path))

    def mkdir(self, path: str) -> None:
        """Creates the directory and its missing parents."""
        self._runtime.mkdir(self._id, path)

    def remove(self, path: str, recursive: Optional[bool] = None, strict: bool = False) -> None:
        """Removes a file, or a directory with its contents. A missing path is
        a no-op unless ``strict`` (then NotFoundError); ``recursive=False``
        refuses a non-empty directory (ConflictError)."""
        self._runtime.remove(self._id, path, recursive, strict)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFoundError:
            return False
