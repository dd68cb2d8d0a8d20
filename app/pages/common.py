"""Helpers shared by the page modules (the files in app/pages/ that define a `router`).

A page module never imports another page module (tests/test_layers.py): what two
pages both need lives in a helper module of app/pages/ instead: this one for
run lookups and errors, `templating` for rendering and formatting, `charts` for
the Plotly figures, `errors` for the HTML error pages.
"""

from __future__ import annotations

from fastapi import HTTPException, status
from sqlmodel import Session

from app.models import Run
from app.services import runs
from app.services.errors import ServiceError


def not_found(message: str) -> HTTPException:
    """Rendered as the HTML 404 page for page routes (see app.pages.errors)."""
    return HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=message)


def get_run_or_404(session: Session, run_id: int) -> Run:
    try:
        return runs.get_run(session=session, run_id=run_id)
    except ServiceError as err:
        raise not_found(str(err)) from None
