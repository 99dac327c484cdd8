"""Tokens, loopback checks and rate limits for ``cmrstudio serve``."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
import threading
import time
from pathlib import Path

from cmrstudio.errors import CmrError

TOKEN_FILE = "serve-token"


def default_token_path() -> Path:
    """The server's token beside the studio's settings (``$CMRSTUDIO_CONFIG``'s folder, or ~/.config/cmrstudio)."""
    from cmrstudio.settings import settings_path

    return settings_path().parent / TOKEN_FILE


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (what no other machine can reach)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def read_token(path: str | os.PathLike) -> str:
    """The token in ``path``; refused if missing, empty, or readable by others."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CmrError(f"The token file {p} does not exist; create it (one line, mode 600) or leave --token-file out "
                       "to have one generated.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CmrError(f"The token file {p} cannot be read ({exc}).") from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CmrError(f"The token file {p} can be read by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                       f"run `chmod 600 {p}` and start again.")
    if len(text) < 16 or any(c.isspace() for c in text):
        raise CmrError(f"The token file {p} holds no usable token (one line of at least 16 characters, no spaces).")
    return text


def make_token(path: str | os.PathLike) -> str:
    """A new random token written to ``path`` with mode 600 (the folder is created); returns it."""
    p = Path(path).expanduser()
    token = secrets.token_urlsafe(32)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
    except FileExistsError:
        return read_token(p)
    except OSError as exc:
        raise CmrError(f"A token could not be stored in {p} ({exc.strerror or exc}); give --token-file, "
                       "or bind to 127.0.0.1 only.") from None
    return token


def same_token(given: str | None, expected: str | None) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip() else None


class RateLimit:
    """A token bucket per client: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate, self.burst = float(rate), float(burst if burst is not None else 2 * rate)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            level, t = self._buckets.get(client, (self.burst, now))
            level = min(self.burst, level + (now - t) * self.rate)
            ok = level >= 1.0
            self._buckets[client] = (level - 1.0 if ok else level, now)
            if len(self._buckets) > 10000:  # forget idle clients
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            return ok
