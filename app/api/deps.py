"""Dependencies shared by the routes: settings, engine, session, and the API token check."""

from __future__ import annotations

import secrets
from collections.abc import Generator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from app.core.config import Settings, get_settings

TOKEN_COOKIE = "trainboard_token"
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
cookie_scheme = APIKeyCookie(name=TOKEN_COOKIE, auto_error=False,
                             description="TRAINBOARD_API_TOKEN in a cookie (for browser pages)")


def _same_secret(given: str | None, expected: str | None) -> bool:
    # compare_digest: no timing side channel on how much of the secret matched.
    return bool(given) and bool(expected) and secrets.compare_digest(given.encode(), expected.encode())


def require_token(
    settings: SettingsDep,
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> None:
    """When TRAINBOARD_API_TOKEN is set, the request must carry it (bearer header or cookie), else 401.

    A browser sends the cookie with any request to this site, so a cookie-authenticated call must
    also echo the trainboard_csrf cookie in the X-CSRF-Token header (403 otherwise); another site
    can neither read that cookie nor set the header. A bearer header needs no such check.
    """
    expected = settings.TRAINBOARD_API_TOKEN
    if expected is None:
        return
    if bearer is not None and _same_secret(bearer.credentials, expected):
        return
    if _same_secret(cookie, expected):
        if _same_secret(request.headers.get(CSRF_HEADER), request.cookies.get(CSRF_COOKIE)):
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


TokenDep = Depends(require_token)
