"""Browser login for an API with TRAINBOARD_API_TOKEN: /login, /logout, and the CSRF cookie.

With a token set, every page (like every API read) needs a login: a page asked for without one
redirects to /login?next=<page>. Logging in checks the token (constant time, at most
AUTH_FAILURES_ALLOWED wrong ones per client address per AUTH_FAILURE_WINDOW_S, shared with
wrong bearer tokens) and sets two cookies, both SameSite=Strict:

- trainboard_session (HttpOnly): a session id signed with the server's secret
  (app.core.security.SessionSigner), never the token; logging out revokes it;
- trainboard_csrf (readable by the pages' JS): a random value the JS echoes in the
  X-CSRF-Token header of every mutating API call (double-submit). app/api/deps.py
  refuses a cookie-authenticated call without it, so another site cannot make the
  browser act, even where SameSite is not enforced.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from app.api.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    client_address,
    failed_attempts,
    has_session,
    session_signer,
    too_many_failures,
)
from app.core.security import safe_next, tokens_equal

router = APIRouter(tags=["pages"], include_in_schema=False)


@dataclass(frozen=True)
class AuthState:
    required: bool  # TRAINBOARD_API_TOKEN is set
    logged_in: bool  # the request carries a valid session cookie
    csrf_token: str  # the value the JS must echo ("" when none is needed)

    @property
    def can_write(self) -> bool:
        """Whether buttons that change runs can work for this browser."""
        return self.logged_in or not self.required


def _configured_token(request: Request) -> str | None:
    return request.app.state.settings.TRAINBOARD_API_TOKEN


def auth_state(request: Request) -> AuthState:
    if _configured_token(request) is None:
        return AuthState(required=False, logged_in=False, csrf_token="")
    logged_in = has_session(request)
    # A logged-in browser that lost its CSRF cookie gets a new one (see ensure_csrf_cookie).
    csrf = request.cookies.get(CSRF_COOKIE) or (secrets.token_urlsafe(32) if logged_in else "")
    return AuthState(required=True, logged_in=logged_in, csrf_token=csrf if logged_in else "")


def require_page_login(request: Request) -> None:
    """Pages with a token set: a browser without a session goes to the login page first."""
    if _configured_token(request) is not None and not has_session(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(status.HTTP_303_SEE_OTHER, detail="log in first",
                            headers={"Location": f"/login?next={quote(safe_next(target), safe='/')}"})


def _set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool) -> None:
    max_age = request.app.state.settings.SESSION_MAX_AGE_S
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=http_only,
                        samesite="strict", secure=request.url.scheme == "https")


def ensure_csrf_cookie(request: Request, response: Response, state: AuthState) -> None:
    """Re-issue the CSRF cookie when a logged-in browser lacks it (the page's JS needs it)."""
    if state.logged_in and request.cookies.get(CSRF_COOKIE) != state.csrf_token:
        _set_cookie(request, response, CSRF_COOKIE, state.csrf_token, http_only=False)


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
    refused = too_many_failures(request)
    if refused is not None:
        retry_after = (refused.headers or {})["Retry-After"]
        response = _login_page(request, next_url=next_url, status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                               error=f"Too many wrong tokens. Try again in {retry_after} s.")
        response.headers["Retry-After"] = retry_after
        return response
    if not tokens_equal(token.strip(), expected):
        failed_attempts(request).record(client_address(request))
        return _login_page(request, next_url=next_url, error="That token is not right.",
                           status_code=status.HTTP_401_UNAUTHORIZED)
    signer = session_signer(request)
    assert signer is not None  # a token is configured
    response = RedirectResponse(next_url, status_code=status.HTTP_303_SEE_OTHER)
    _set_cookie(request, response, SESSION_COOKIE, signer.issue(), http_only=True)
    _set_cookie(request, response, CSRF_COOKIE, secrets.token_urlsafe(32), http_only=False)
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session (a copy of its cookie stops working too) and forget the cookies.

    A form post carrying the CSRF value, so other sites cannot log you out."""
    if auth_state(request).logged_in and not tokens_equal(csrf, request.cookies.get(CSRF_COOKIE)):
        return Response("logout needs the CSRF token of this site's form", status_code=status.HTTP_403_FORBIDDEN)
    signer = session_signer(request)
    if signer is not None:
        signer.revoke(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict")
    return response
