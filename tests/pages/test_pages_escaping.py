"""User text (run names, tags, notes, query strings) never reaches a page as markup or script."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.pages.templating import script_json

PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
# What must never appear: the payloads themselves and their dangerous pieces.
FORBIDDEN = (*PAYLOADS, "<script>alert", "<img src=x", "onerror=alert(1)>")


@pytest.fixture
def hostile_runs(seed: Any) -> list[int]:
    """Runs whose name, tags and notes hold the payloads, with metrics (so they appear in figures)."""
    return [
        seed.run("succeeded", name=PAYLOADS[0], tags=list(PAYLOADS), notes=PAYLOADS[1], points=20,
                 hyperparameters={"lr": 0.1}),
        seed.run("failed", name=PAYLOADS[1], tags=[PAYLOADS[0]], notes=PAYLOADS[0], points=20,
                 error=PAYLOADS[0] + "\n" + PAYLOADS[1], hyperparameters={"lr": 0.2}),
    ]


def _pages(run_ids: list[int]) -> list[str]:
    first, second = run_ids
    quoted = "%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    return ["/", f"/?q={quoted}", f"/?tag={quoted}", f"/?tag=%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
            f"/runs/{first}", f"/runs/{second}", f"/runs/new?clone={first}", f"/runs/new?clone={second}",
            f"/compare?ids={first},{second}", f"/runs/new?clone={quoted}", f"/compare?ids={quoted}",
            f"/login?next={quoted}", f"/nope/{quoted}"]


def test_escaping_no_page_contains_the_raw_payloads(client: TestClient, hostile_runs: list[int]) -> None:
    for path in _pages(hostile_runs):
        response = client.get(path)
        assert response.status_code in (200, 400, 404), path
        for forbidden in FORBIDDEN:
            assert forbidden not in response.text, (path, forbidden)


def test_escaping_payloads_are_shown_as_text(client: TestClient, hostile_runs: list[int]) -> None:
    page = client.get(f"/runs/{hostile_runs[0]}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_escaping_only_known_scripts_run(client: TestClient, hostile_runs: list[int], html: SimpleNamespace) -> None:
    """Every <script> is a same-site file or an inert JSON block; no element has an on* handler."""
    for path in _pages(hostile_runs):
        page = client.get(path).text
        for attrs in html.elements(page, "script"):
            assert attrs.get("type") == "application/json" or (attrs.get("src") or "").startswith("/"), (path, attrs)
        for attrs in html.elements(page):
            assert not any(name.startswith("on") for name in attrs), (path, attrs)


def test_escaping_json_blocks_still_hold_the_exact_text(client: TestClient, hostile_runs: list[int],
                                                        html: SimpleNamespace) -> None:
    first, second = hostile_runs
    page = client.get(f"/compare?ids={first},{second}").text
    names = {trace["name"] for trace in html.json_block(page, "compare-figure")["data"]}
    # Plotly labels are pseudo-HTML: the names go in HTML-escaped, so Plotly shows them literally.
    assert f"#{first} &lt;script&gt;alert(1)&lt;/script&gt;" in names
    run_data = html.json_block(client.get(f"/runs/{first}").text, "run-data")
    assert run_data["name"] == PAYLOADS[0]


def test_script_json_escapes_what_could_end_the_block() -> None:
    text = script_json({"a": "</script><b>&\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><b>&\u2028"}


def test_pages_send_a_content_security_policy(client: TestClient) -> None:
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"].split("script-src")[1].split(";")[0]
    assert headers["x-content-type-options"] == "nosniff"
