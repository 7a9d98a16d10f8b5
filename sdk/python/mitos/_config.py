"""Where mitosd is and how to authenticate to it: explicit arguments first,
then the environment, then the token file mitosd writes on first start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = "/var/lib/mitos"
DEFAULT_MAX_RETRIES = 2


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: Optional[str]
    max_retries: int = DEFAULT_MAX_RETRIES
    #: Socket timeout in seconds for lifecycle and unary runtime calls (streams wait as long as the command runs).
    timeout: float = 600.0


def _non_empty(v: Optional[str]) -> Optional[str]:
    if v is None:
        return None
    v = v.strip()
    return v or None


def _read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def token_file_path(env: Optional[Mapping[str, str]] = None) -> str:
    """Path of the token file mitosd creates (mode 0600) in its data dir."""
    env = os.environ if env is None else env
    return os.path.join(_non_empty(env.get("MITOS_DATA_DIR")) or DEFAULT_DATA_DIR, "token")


def resolve_config(
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
    max_retries: Optional[int] = None,
    timeout: Optional[float] = None,
    env: Optional[Mapping[str, str]] = None,
    read: Callable[[str], str] = _read_text,
) -> Config:
    env = os.environ if env is None else env
    url = _non_empty(base_url) or _non_empty(env.get("MITOS_BASE_URL")) or DEFAULT_BASE_URL
    key = _non_empty(api_key) or _non_empty(env.get("MITOS_API_KEY")) or _read_token(token_file_path(env), read)
    return Config(
        base_url=url.rstrip("/"),
        api_key=key,
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max(0, int(max_retries)),
        timeout=600.0 if timeout is None else float(timeout),
    )


def _read_token(path: str, read: Callable[[str], str]) -> Optional[str]:
    try:
        return _non_empty(read(path))
    except (OSError, UnicodeDecodeError):
        # Not there or not readable: go without a token; the server's 401
        # explains how to supply one.
        return None
