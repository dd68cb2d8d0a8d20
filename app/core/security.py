"""What the web side needs to tell input and callers apart: ids, safe redirects, sessions, guess limits.

Written once and used by the API, the pages and the middlewares of app/core/guards.py.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

# run.id is INTEGER: 64-bit on SQLite, 32-bit on PostgreSQL. A larger id names no run (404), and
# must never reach the driver, which raises on an integer it cannot bind.
MAX_ID = 2**31 - 1
# Query offsets and page numbers past this are a 422, not an overflow in the database driver.
MAX_OFFSET = 10**9
_ASCII_DIGITS = re.compile(r"[0-9]{1,30}")


def parse_id(text: str | None) -> int | None:
    """A run id from user text ("42"), or None: ASCII digits only ("²".isdigit() is True, int("²") fails)."""
    text = (text or "").strip()
    return int(text) if _ASCII_DIGITS.fullmatch(text) else None


def parse_id_list(values: Iterable[str]) -> list[int] | None:
    """Run ids from comma-separated user text ("1,2,3", or several such values, as ids=1&ids=2 gives),
    in order; None when a part is not an id. Empty parts ("1,,2", a trailing comma) are skipped."""
    ids = [parse_id(part) for value in values for part in value.split(",") if part.strip()]
    return None if any(run_id is None for run_id in ids) else [run_id for run_id in ids if run_id is not None]


def id_exists_in_range(run_id: int) -> bool:
    """Whether `run_id` can name a row at all (0 < id <= MAX_ID)."""
    return 0 < run_id <= MAX_ID


def safe_next(target: str | None) -> str:
    """A path on this site to go to after login, else "/".

    Browsers drop tabs and newlines inside URLs and read "\\" as "/", so "/\\t/evil.example" opens
    "//evil.example": anything but printable ASCII without spaces is refused, as are "//" and "\\".
    """
    if not target or not all(33 <= ord(ch) < 127 for ch in target):
        return "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def json_safe(value: Any) -> Any:
    """`value` made encodable by a strict JSON encoder: NaN/±inf, bytes and odd objects become text.

    The 422 handler echoes the rejected input; that input may be exactly what JSON cannot hold.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, bool, int)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
            return str(value)
        return value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:200]).decode("utf-8", errors="replace")
    return str(value)[:1000]


class FailedAttempts:
    """Wrong tokens per client address in a sliding window (kept per web process).

    Shared by the login form and the bearer check, so a guesser gets `limit` tries in all.
    At most `max_clients` addresses are remembered (the oldest are forgotten first).
    """

    def __init__(self, limit: int, window_s: float, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after_s(self, client: str) -> float:
        """0 when `client` may try; else the seconds until its oldest failure leaves the window."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if not failures:
                return 0.0
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            return self.window_s - (now - failures[0]) if len(failures) >= self.limit else 0.0

    def record(self, client: str) -> None:
        with self._lock:
            failures = self._failures.setdefault(client, deque(maxlen=self.limit))
            failures.append(time.monotonic())
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


class SessionSigner:
    """Login sessions in a cookie: "<id>.<expiry>.<HMAC-SHA256>", signed with a server secret.

    The cookie never holds the API token. Logging out revokes the session id in this process
    (revocations are forgotten once the session would have expired anyway).
    The key also depends on the token, so changing the token ends every session.
    """

    def __init__(self, secret: str | None, token: str, max_age_s: int) -> None:
        base = (secret or secrets.token_urlsafe(32)).encode()
        self._key = hmac.new(base, b"trainboard-session\0" + token.encode(), hashlib.sha256).digest()
        self.max_age_s = max_age_s
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        payload = f"{secrets.token_urlsafe(18)}.{int(time.time()) + self.max_age_s}"
        return f"{payload}.{self._mac(payload)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id of a valid, unexpired, unrevoked cookie, else None."""
        parts = (cookie or "").split(".")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._mac(payload), parts[2]) or int(parts[1]) < time.time():
            return None
        with self._lock:
            return None if parts[0] in self._revoked else parts[0]

    def revoke(self, cookie: str | None) -> None:
        session_id = self.session_id(cookie)
        if session_id is None:
            return
        now = time.time()
        with self._lock:
            self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
            self._revoked[session_id] = now + self.max_age_s


def tokens_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    return bool(given) and bool(expected) and secrets.compare_digest(given.encode(), expected.encode())
