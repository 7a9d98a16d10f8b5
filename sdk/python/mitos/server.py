"""Entry point: one SandboxServer per mitosd, holding the lifecycle (REST)
client and the runtime (Connect) client that every Sandbox it hands out
reuses."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ._config import resolve_config
from ._connect import ConnectClient
from ._http import HttpClient
from ._types import (
    CheckpointInfo,
    Health,
    TemplateInfo,
    array,
    record,
    to_checkpoint_info,
    to_health,
    to_sandbox_info,
    to_template_info,
)
from .errors import STATUS_BY_CODE, MitosError, error_from_envelope, make_error
from .sandbox import Sandbox


class SandboxServer:
    """A client for one mitosd.

    ``base_url`` defaults to ``MITOS_BASE_URL``, else ``http://127.0.0.1:8080``;
    ``api_key`` to ``MITOS_API_KEY``, else the token file
    ``${MITOS_DATA_DIR:-/var/lib/mitos}/token``.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_retries: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> None:
        self.config = resolve_config(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)
        self.base_url = self.config.base_url
        self._http = HttpClient(self.config)
        self._runtime = ConnectClient(self.config)

    def __repr__(self) -> str:
        return "SandboxServer(base_url=%r)" % self.base_url

    def _sandbox(self, v: Any) -> Sandbox:
        return Sandbox(self._http, self._runtime, to_sandbox_info(v))

    def create(
        self,
        template: str = "python",
        id: Optional[str] = None,
        timeout: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        network: Optional[Mapping[str, Any]] = None,
    ) -> Sandbox:
        """A new sandbox restored from ``template`` (from its warm pool when one
        is warm). ``timeout``: its deadline in seconds from now (refused with
        TimeoutTooLargeError above the server's ceiling); ``env``: extra
        environment for its commands; ``network``: its policy
        ``{"egress": "deny"|"allow", "allow_out": [...], "deny_out": [...]}``
        (the template must have been built with network; docs/network.md)."""
        body = _create_body({"template": template}, id, timeout, env)
        if network is not None:
            body["network"] = dict(network)
        return self._sandbox(self._http.post("/v1/fork", body, create=True))

    #: The API's name for create(): ``POST /v1/fork`` restores a sandbox from a template.
    fork = create

    def from_checkpoint(
        self,
        checkpoint: str,
        id: Optional[str] = None,
        timeout: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> Sandbox:
        """A new sandbox restored from a checkpoint: its memory, processes and
        files as they were."""
        body = _create_body({"checkpoint": checkpoint}, id, timeout, env)
        return self._sandbox(self._http.post("/v1/sandboxes", body, create=True))

    def fork_checkpoint(self, checkpoint: str, count: int = 1, timeout: Optional[int] = None) -> List[Sandbox]:
        """``count`` new sandboxes from one checkpoint, sharing its pages."""
        body = _create_body({"count": count}, None, timeout, None)
        res = self._http.post("/v1/checkpoints/%s/fork" % urllib.parse.quote(checkpoint, safe=""), body, create=True)
        return [self._sandbox(s) for s in array("fork answer sandboxes", record("fork answer", res).get("sandboxes"))]

    def list_checkpoints(self) -> List[CheckpointInfo]:
        return [to_checkpoint_info(c) for c in array("checkpoint list", self._http.get("/v1/checkpoints"))]

    def delete_checkpoint(self, id: str) -> None:
        """Deletes a checkpoint; chunks other checkpoints share stay."""
        self._http.delete("/v1/checkpoints/" + urllib.parse.quote(id, safe=""))

    def get(self, id: str) -> Sandbox:
        """A handle on an existing sandbox (NotFoundError if there is none)."""
        return self._sandbox(self._http.get("/v1/sandboxes/" + urllib.parse.quote(id, safe="")))

    def list_sandboxes(self) -> List[Sandbox]:
        return [self._sandbox(s) for s in array("sandbox list", self._http.get("/v1/sandboxes"))]

    def create_template(
        self,
        id: str,
        image: Optional[str] = None,
        packages: Optional[Sequence[str]] = None,
        init: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        resources: Optional[Mapping[str, int]] = None,
        init_wait_seconds: Optional[int] = None,
        init_timeout_seconds: Optional[int] = None,
        disk_size_mib: Optional[int] = None,
        network: Optional[Mapping[str, Any]] = None,
        wait: bool = True,
        poll_interval: float = 1.0,
        on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> TemplateInfo:
        """Creates a template (an existing id returns the existing one).
        ``resources``: ``{"vcpu_count": n, "mem_size_mib": m}``.
        ``init_wait_seconds``: how long the booted guest settles before ``init``
        runs; ``init_timeout_seconds``: the limit on each init command (default
        600). ``disk_size_mib``: a workspace disk of that size at /workspace on
        the host, so files may exceed guest RAM (docs/disks.md). ``network``:
        a network device and its sandboxes' default policy (docs/network.md). Waits until
        the template is ready unless ``wait=False``. ``on_event`` follows the
        build as it happens, one dict per event: ``{"type": "phase" | "step" |
        "output" | "step_done", ...}`` (docs/templates.md "Build log")."""
        body: Dict[str, Any] = {"id": id}
        if image is not None:
            body["image"] = image
        if packages is not None:
            body["packages"] = list(packages)
        if init is not None:
            body["init"] = list(init)
        if env is not None:
            body["env"] = dict(env)
        if resources is not None:
            body["resources"] = dict(resources)
        if init_wait_seconds is not None:
            body["init_wait_seconds"] = init_wait_seconds
        if init_timeout_seconds is not None:
            body["init_timeout_seconds"] = init_timeout_seconds
        if disk_size_mib is not None:
            body["disk_size_mib"] = disk_size_mib
        if network is not None:
            body["network"] = dict(network)
        if on_event is not None:
            return self._follow_build(id, body, on_event)
        t = to_template_info(self._http.post("/v1/templates", body, create=True))
        while not t.ready and wait:
            time.sleep(poll_interval)
            for found in self.list_templates():
                if found.id == id:
                    t = found
        return t

    def _follow_build(
        self, id: str, body: Dict[str, Any], on_event: Callable[[Dict[str, Any]], None]
    ) -> TemplateInfo:
        outcome: List[Any] = []

        def line(v: Any) -> None:
            kind = v.get("type") if isinstance(v, dict) else None
            if kind == "template":
                outcome.append(to_template_info(v.get("template")))
            elif kind == "error":
                code = (v.get("error") or {}).get("code", "internal")
                outcome.append(error_from_envelope(STATUS_BY_CODE.get(code, 500), v))
            elif isinstance(v, dict):
                on_event(v)

        self._http.post_lines("/v1/templates", body, line)
        if not outcome:
            raise make_error(
                "internal",
                "the build log of template %s ended without an outcome" % id,
                remediation="The connection was cut or mitosd stopped; list templates to see whether it is ready, or retry.",
            )
        if isinstance(outcome[-1], MitosError):
            raise outcome[-1]
        return outcome[-1]

    def delete_template(self, id: str, force: bool = False) -> None:
        """Deletes a template and frees its RAM base. Refused (ConflictError)
        while sandboxes or a warm pool use it, unless ``force``, which
        terminates them."""
        self._http.delete("/v1/templates/" + urllib.parse.quote(id, safe="") + ("?force=true" if force else ""))

    def list_templates(self) -> List[TemplateInfo]:
        return [to_template_info(t) for t in array("template list", self._http.get("/v1/templates"))]

    def health(self) -> Health:
        return to_health(self._http.get("/v1/health"))

    def pools(self) -> List[Dict[str, Any]]:
        """Warm pools: ``[{template, warm, target, claimed}]``."""
        return array("pools", self._http.get("/v1/pools"))

    def metering(self) -> Dict[str, Any]:
        """Memory per sandbox and host totals, shared pages counted once."""
        res = self._http.get("/v1/metering")
        return res if isinstance(res, dict) else {"value": res}


def _create_body(
    base: Dict[str, Any], id: Optional[str], timeout: Optional[int], env: Optional[Mapping[str, str]]
) -> Dict[str, Any]:
    """The body of a creating call: ``base`` plus the options that were given."""
    body = dict(base)
    if id is not None:
        body["id"] = id
    if timeout is not None:
        body["timeout_seconds"] = timeout
    if env is not None:
        body["env"] = dict(env)
    return body


def create(
    template: str = "python",
    id: Optional[str] = None,
    timeout: Optional[int] = None,
    env: Optional[Mapping[str, str]] = None,
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
) -> Sandbox:
    """A new sandbox from ``template`` on the mitosd found by the usual
    configuration (``base_url``/``MITOS_BASE_URL``, ``api_key``/``MITOS_API_KEY``/token file)."""
    return SandboxServer(base_url=base_url, api_key=api_key).create(template, id=id, timeout=timeout, env=env)
