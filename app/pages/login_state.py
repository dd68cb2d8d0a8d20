"""A browser's login state, for every page: read the session cookie, require a login, keep the CSRF cookie.

A helper module of the pages (no routes): app/pages/auth.py (the /login and /logout pages)
and app/pages/templating.py (every page's context) both use it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException, Request, Response, status

from app.api.deps import CSRF_COOKIE, has_session
from app.core.security import safe_next


@dataclass(frozen=True)
class AuthState:
    required: bool  # TRAINBOARD_API_TOKEN is set
    logged_in: bool  # the request carries a valid session cookie
    csrf_token: str  # the value the JS must echo ("" when none is needed)

    @property
    def can_write(self) -> bool:
        """Whether buttons that change runs can work for this browser."""
        return self.logged_in or not self.required


def configured_token(request: Request) -> str | None:
    return request.app.state.settings.TRAINBOARD_API_TOKEN


def auth_state(request: Request) -> AuthState:
    if configured_token(request) is None:
        return AuthState(required=False, logged_in=False, csrf_token="")
    logged_in = has_session(request)
    # A logged-in browser that lost its CSRF cookie gets a new one (see ensure_csrf_cookie).
    csrf = request.cookies.get(CSRF_COOKIE) or (secrets.token_urlsafe(32) if logged_in else "")
    return AuthState(required=True, logged_in=logged_in, csrf_token=csrf if logged_in else "")


def require_page_login(request: Request) -> None:
    """Pages with a token set: a browser without a session goes to the login page first."""
    if configured_token(request) is not None and not has_session(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(status.HTTP_303_SEE_OTHER, detail="log in first",
                            headers={"Location": f"/login?next={quote(safe_next(target), safe='/')}"})


def set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool) -> None:
    max_age = request.app.state.settings.SESSION_MAX_AGE_S
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=http_only,
                        samesite="strict", secure=request.url.scheme == "https")


def ensure_csrf_cookie(request: Request, response: Response, state: AuthState) -> None:
    """Re-issue the CSRF cookie when a logged-in browser lacks it (the page's JS needs it)."""
    if state.logged_in and request.cookies.get(CSRF_COOKIE) != state.csrf_token:
        set_cookie(request, response, CSRF_COOKIE, state.csrf_token, http_only=False)
