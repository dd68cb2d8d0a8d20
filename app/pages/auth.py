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
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from app.api.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    client_address,
    failed_attempts,
    session_signer,
    too_many_failures,
)
from app.core.security import safe_next, tokens_equal
from app.pages.login_state import auth_state, configured_token, set_cookie
from app.pages.templating import render

router = APIRouter(tags=["pages"], include_in_schema=False)


def _login_page(request: Request, *, next_url: str, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    return render(request, "login.html", {"next_url": next_url, "error": error}, status_code=status_code)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query's name
    return _login_page(request, next_url=safe_next(next))


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/") -> Response:  # noqa: A002
    next_url = safe_next(next)
    expected = configured_token(request)
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
    set_cookie(request, response, SESSION_COOKIE, signer.issue(), http_only=True)
    set_cookie(request, response, CSRF_COOKIE, secrets.token_urlsafe(32), http_only=False)
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
