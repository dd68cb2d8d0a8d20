"""plotly.min.js, served from the installed plotly package: no copy in the repository, no CDN.

The URL carries plotly's version, so browsers cache it for good. The 4.6 MB
file is gzipped once per process (to about 1.4 MB) for browsers that accept it.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.pages.templating import PLOTLY_JS, PLOTLY_URL

router = APIRouter(tags=["pages"], include_in_schema=False)

JS_MEDIA_TYPE = "text/javascript; charset=utf-8"
CACHE_FOREVER = "public, max-age=31536000, immutable"


@lru_cache(maxsize=1)
def _plotly_bytes() -> bytes:
    return PLOTLY_JS.read_bytes()


@lru_cache(maxsize=1)
def _plotly_gzipped() -> bytes:
    return gzip.compress(_plotly_bytes(), compresslevel=6, mtime=0)


@router.get(PLOTLY_URL)
def plotly_js(request: Request) -> Response:
    headers = {"Cache-Control": CACHE_FOREVER, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(_plotly_gzipped(), media_type=JS_MEDIA_TYPE, headers={**headers, "Content-Encoding": "gzip"})
    return Response(_plotly_bytes(), media_type=JS_MEDIA_TYPE, headers=headers)
