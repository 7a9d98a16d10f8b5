"""Mitos: forkable QEMU microVM sandboxes for AI agents.

    import mitos
    sb = mitos.create("python")
    swarm = sb.fork(8)
    for i, agent in enumerate(swarm):
        print(agent.exec(f"python3 -c 'print({i} ** 2)'").stdout)
"""

from __future__ import annotations

from ._config import DEFAULT_BASE_URL, Config, resolve_config, token_file_path
from ._types import (
    CheckpointInfo,
    CodeContext,
    Execution,
    ExecutionError,
    ExecResult,
    FileInfo,
    Health,
    Logs,
    MemoryUsage,
    Result,
    SandboxInfo,
    TemplateInfo,
    TimeoutInfo,
)
from .errors import (
    STATUS_BY_CODE,
    BodyTooLargeError,
    CanceledError,
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
)
from .sandbox import Sandbox, SandboxFiles
from .server import SandboxServer, create

__version__ = "0.1.0"

__all__ = [
    "CheckpointInfo",
    "create",
    "SandboxServer",
    "Sandbox",
    "SandboxFiles",
    "ExecResult",
    "Execution",
    "ExecutionError",
    "Logs",
    "Result",
    "CodeContext",
    "FileInfo",
    "Health",
    "MemoryUsage",
    "SandboxInfo",
    "TemplateInfo",
    "TimeoutInfo",
    "Config",
    "resolve_config",
    "token_file_path",
    "DEFAULT_BASE_URL",
    "STATUS_BY_CODE",
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
]
