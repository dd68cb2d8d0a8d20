"""Dependencies shared by the routes: settings, engine, session, run ids, and the token checks."""

from __future__ import annotations

from collections.abc import Generator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from app.core.config import Settings, get_settings
from app.core.security import FailedAttempts, SessionSigner, id_exists_in_range, tokens_equal
from app.services.errors import NotFound

# A signed login session (app.core.security.SessionSigner), never the token itself.
SESSION_COOKIE = "trainboard_session"
# Double-submit CSRF token: the pages' JS echoes this (non-HttpOnly) cookie in the header.
CSRF_COOKIE = "trainboard_csrf"
CSRF_HEADER = "X-CSRF-Token"

# `create_app(settings)` overrides get_settings, so each app (and each test) has its own settings.
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db_engine(request: Request) -> Engine:
    """The engine of the app serving this request (created by create_app)."""
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_db_engine)]


def get_session(engine: EngineDep) -> Generator[Session, None, None]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

# auto_error=False: a missing credential is not an error while the API is open.
bearer_scheme = HTTPBearer(auto_error=False, description="TRAINBOARD_API_TOKEN as a bearer token")
cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False,
                             description="The signed session cookie set by /login (for browser pages)")


def client_address(request: Request) -> str:
    """The client's address (the TCP peer, or X-Forwarded-For from FORWARDED_ALLOW_IPS only)."""
    return request.client.host if request.client else "unknown"


def failed_attempts(request: Request) -> FailedAttempts:
    """Wrong tokens per client of this app: the login form and the bearer header count together."""
    state = request.app.state
    if getattr(state, "failed_attempts", None) is None:
        settings: Settings = state.settings
        state.failed_attempts = FailedAttempts(settings.AUTH_FAILURES_ALLOWED, settings.AUTH_FAILURE_WINDOW_S)
    return state.failed_attempts


def session_signer(request: Request) -> SessionSigner | None:
    """Signs and checks login session cookies; None while the app has no token."""
    state = request.app.state
    settings: Settings = state.settings
    if settings.TRAINBOARD_API_TOKEN is None:
        return None
    if getattr(state, "session_signer", None) is None:
        state.session_signer = SessionSigner(settings.SESSION_SECRET, settings.TRAINBOARD_API_TOKEN,
                                             settings.SESSION_MAX_AGE_S)
    return state.session_signer


def has_session(request: Request) -> bool:
    """Whether the request carries a valid, unrevoked login session cookie."""
    signer = session_signer(request)
    return signer is not None and signer.session_id(request.cookies.get(SESSION_COOKIE)) is not None


def too_many_failures(request: Request) -> HTTPException | None:
    wait_s = failed_attempts(request).retry_after_s(client_address(request))
    if wait_s <= 0:
        return None
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(int(wait_s) + 1)},
                         detail="too many wrong tokens from this address (AUTH_FAILURES_ALLOWED per "
                                f"AUTH_FAILURE_WINDOW_S); try again in {int(wait_s) + 1} s")


def _authenticate(request: Request, settings: Settings, bearer: HTTPAuthorizationCredentials | None,
                  *, write: bool) -> None:
    expected = settings.TRAINBOARD_API_TOKEN
    if expected is None:
        return
    if bearer is not None:
        refused = too_many_failures(request)
        if refused is not None:
            raise refused
        if tokens_equal(bearer.credentials, expected):
            return
        failed_attempts(request).record(client_address(request))
    elif has_session(request):
        if not write or tokens_equal(request.headers.get(CSRF_HEADER), request.cookies.get(CSRF_COOKIE)):
            return
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"cookie-authenticated requests need the {CSRF_HEADER} header to equal the "
                   f"{CSRF_COOKIE} cookie (reload the page, or log in again)",
        )
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="this endpoint needs the API token: send 'Authorization: Bearer <TRAINBOARD_API_TOKEN>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_token(
    settings: SettingsDep,
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    _cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> None:
    """Writes: when TRAINBOARD_API_TOKEN is set, the bearer token or a login session, else 401.

    A browser sends the cookie with any request to this site, so a cookie-authenticated call must
    also echo the trainboard_csrf cookie in the X-CSRF-Token header (403 otherwise); another site
    can neither read that cookie nor set the header. A bearer header needs no such check. Wrong
    bearer tokens count against the client like wrong logins (429 past AUTH_FAILURES_ALLOWED).
    """
    _authenticate(request, settings, bearer, write=True)


def require_reader(
    settings: SettingsDep,
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    _cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> None:
    """Reads: with a token set, runs, metrics, checkpoints and streams are private too (401)."""
    _authenticate(request, settings, bearer, write=False)


TokenDep = Depends(require_token)
ReaderDep = Depends(require_reader)


def valid_run_id(run_id: Annotated[int, Path(description="A run id")]) -> int:
    """The path's run id; one past what the id column holds names no run (404, never a driver error)."""
    if not id_exists_in_range(run_id):
        raise NotFound(f"run {run_id} not found")
    return run_id


RunIdDep = Annotated[int, Depends(valid_run_id)]
