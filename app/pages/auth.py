"""Browser login for an API with TRAINBOARD_API_TOKEN: /login, /logout, and the CSRF cookie.

Reading stays open, like the API's reads: every page renders without a token,
with its buttons disabled and a "log in" prompt. Logging in checks the token
(constant time) and sets two cookies, both SameSite=Strict:

- trainboard_token (HttpOnly): the token itself, which the API's token dependency accepts;
- trainboard_csrf (readable by the pages' JS): a random value the JS echoes in the
  X-CSRF-Token header of every mutating API call (double-submit). app/api/deps.py
  refuses a cookie-authenticated call without it, so another site cannot make the
  browser act, even where SameSite is not enforced.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from app.api.deps import CSRF_COOKIE, TOKEN_COOKIE

router = APIRouter(tags=["pages"], include_in_schema=False)

LOGIN_MAX_AGE_S = 30 * 24 * 3600
# Guessing the token through the form: at most this many wrong tries per client address per window.
LOGIN_FAILURES_ALLOWED = 10
LOGIN_FAILURE_WINDOW_S = 300.0


class FailedLogins:
    """Wrong tokens per client address in a sliding window (kept per web process)."""

    def __init__(self, limit: int = LOGIN_FAILURES_ALLOWED, window_s: float = LOGIN_FAILURE_WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def retry_after_s(self, client: str) -> float:
        """0 when `client` may try; else the seconds until its oldest failure leaves the window."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures[client]
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            return self.window_s - (now - failures[0]) if len(failures) >= self.limit else 0.0

    def record(self, client: str) -> None:
        with self._lock:
            self._failures[client].append(time.monotonic())


def _failed_logins(request: Request) -> FailedLogins:
    state = request.app.state
    if not hasattr(state, "failed_logins"):
        state.failed_logins = FailedLogins()
    return state.failed_logins


@dataclass(frozen=True)
class AuthState:
    required: bool  # TRAINBOARD_API_TOKEN is set
    logged_in: bool  # the request carries the right token cookie
    csrf_token: str  # the value the JS must echo ("" when none is needed)

    @property
    def can_write(self) -> bool:
        """Whether buttons that change runs can work for this browser."""
        return self.logged_in or not self.required


def _configured_token(request: Request) -> str | None:
    return request.app.state.settings.TRAINBOARD_API_TOKEN


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    return bool(given) and bool(expected) and secrets.compare_digest(given.encode(), expected.encode())


def auth_state(request: Request) -> AuthState:
    expected = _configured_token(request)
    if expected is None:
        return AuthState(required=False, logged_in=False, csrf_token="")
    logged_in = token_matches(request.cookies.get(TOKEN_COOKIE), expected)
    # A logged-in browser that lost its CSRF cookie gets a new one (see ensure_csrf_cookie).
    csrf = request.cookies.get(CSRF_COOKIE) or (secrets.token_urlsafe(32) if logged_in else "")
    return AuthState(required=True, logged_in=logged_in, csrf_token=csrf if logged_in else "")


def _set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool) -> None:
    response.set_cookie(name, value, max_age=LOGIN_MAX_AGE_S, path="/", httponly=http_only,
                        samesite="strict", secure=request.url.scheme == "https")


def ensure_csrf_cookie(request: Request, response: Response, state: AuthState) -> None:
    """Re-issue the CSRF cookie when a logged-in browser lacks it (the page's JS needs it)."""
    if state.logged_in and request.cookies.get(CSRF_COOKIE) != state.csrf_token:
        _set_cookie(request, response, CSRF_COOKIE, state.csrf_token, http_only=False)


def safe_next(target: str | None) -> str:
    """Only a path on this site: no "//evil.example", no "https://…", no backslash tricks."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(request: Request, *, next_url: str, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    from app.pages.templating import render  # templating imports this module

    return render(request, "login.html", {"next_url": next_url, "error": error}, status_code=status_code)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query's name
    return _login_page(request, next_url=safe_next(next))


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/") -> Response:  # noqa: A002
    next_url = safe_next(next)
    expected = _configured_token(request)
    if expected is None:
        return RedirectResponse(next_url, status_code=status.HTTP_303_SEE_OTHER)
    client = request.client.host if request.client else "unknown"
    failures = _failed_logins(request)
    wait_s = failures.retry_after_s(client)
    if wait_s > 0:
        response = _login_page(request, next_url=next_url, status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                               error=f"Too many wrong tokens. Try again in {int(wait_s) + 1} s.")
        response.headers["Retry-After"] = str(int(wait_s) + 1)
        return response
    if not token_matches(token.strip(), expected):
        failures.record(client)
        return _login_page(request, next_url=next_url, error="That token is not right.",
                           status_code=status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(next_url, status_code=status.HTTP_303_SEE_OTHER)
    _set_cookie(request, response, TOKEN_COOKIE, expected, http_only=True)
    _set_cookie(request, response, CSRF_COOKIE, secrets.token_urlsafe(32), http_only=False)
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """Forget the cookies. A form post carrying the CSRF value, so other sites cannot log you out."""
    if auth_state(request).logged_in and not token_matches(csrf, request.cookies.get(CSRF_COOKIE)):
        return Response("logout needs the CSRF token of this site's form", status_code=status.HTTP_403_FORBIDDEN)
    response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
    for name in (TOKEN_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict")
    return response
