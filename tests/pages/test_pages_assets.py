"""Static files: plotly.min.js from the plotly package, no CDN anywhere, and the page helpers' formatting."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import plotly
import pytest
from fastapi.testclient import TestClient

from app.pages import templating
from app.pages.templating import PLOTLY_JS, PLOTLY_URL, fmt_duration, fmt_number, fmt_percent, static_url


def test_plotly_js_is_served_locally(client: TestClient) -> None:
    response = client.get(PLOTLY_URL, headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == PLOTLY_JS.read_bytes()
    assert "immutable" in response.headers["cache-control"]
    assert PLOTLY_URL == f"/vendor/plotly-{plotly.__version__}.min.js"


def test_plotly_js_is_gzipped_for_browsers(client: TestClient) -> None:
    response = client.get(PLOTLY_URL, headers={"Accept-Encoding": "gzip, deflate"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < PLOTLY_JS.stat().st_size / 2
    assert response.content == PLOTLY_JS.read_bytes()  # httpx decodes it


def test_static_files_are_served(client: TestClient) -> None:
    for name, media_type in (("app.css", "text/css"), ("app.js", "text/javascript"), ("charts.js", "text/javascript")):
        response = client.get(static_url(name))
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media_type), name


def test_no_page_loads_anything_from_another_site(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    run_id = seed.run("running", points=20)
    other = seed.run("succeeded", points=20)
    for path in ("/", f"/runs/{run_id}", "/runs/new", f"/runs/new?clone={run_id}", f"/compare?ids={run_id},{other}",
                 "/compare", "/login", "/missing"):
        page = client.get(path).text
        for attrs in html.elements(page, "script") + html.elements(page, "link") + html.elements(page, "img"):
            for key in ("src", "href"):
                url = attrs.get(key) or ""
                assert not url.startswith(("http:", "https:", "//")), (path, attrs)
        assert "cdn." not in page.lower(), path
    charts_page = client.get(f"/runs/{run_id}").text
    assert f'<script src="{PLOTLY_URL}"></script>' in charts_page


def test_static_urls_carry_a_content_hash() -> None:
    content = (templating.STATIC_DIR / "app.css").read_bytes()
    assert static_url("app.css") == f"/static/app.css?v={hashlib.sha256(content).hexdigest()[:10]}"
    assert static_url("missing.js") == "/static/missing.js?v=missing"


def test_static_url_hash_follows_the_file_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templating, "STATIC_DIR", tmp_path)
    asset = tmp_path / "page.js"
    asset.write_text("console.log(1);\n")
    os.utime(asset, ns=(1_000_000_000, 1_000_000_000))
    first = static_url("page.js")
    assert first == "/static/page.js?v=" + hashlib.sha256(b"console.log(1);\n").hexdigest()[:10]
    assert static_url("page.js") == first  # unchanged file, same URL
    asset.write_text("console.log(2);\n")
    os.utime(asset, ns=(2_000_000_000, 2_000_000_000))
    assert static_url("page.js") == "/static/page.js?v=" + hashlib.sha256(b"console.log(2);\n").hexdigest()[:10]
    assert static_url("page.js") != first


def test_formatting_helpers() -> None:
    assert fmt_percent(0.81234) == "81.23 %" and fmt_percent(None) == "–"
    assert fmt_number(390410) == "390,410" and fmt_number(0.000512) == "0.000512" and fmt_number(None) == "–"
    assert fmt_duration(3725) == "1 h 02 min" and fmt_duration(75) == "1 min 15 s" and fmt_duration(5) == "5 s"
    assert fmt_duration(90000) == "1 d 01 h" and fmt_duration(None) == "–"
