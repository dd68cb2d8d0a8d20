"""OpenAPI docs served without a CDN, and cross-site writes refused."""

from __future__ import annotations

from typing import Any


def test_docs_page_uses_local_swagger_assets(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    script = page.text.split('src="', 1)[1].split('"', 1)[0]
    asset = client.get(script)
    assert asset.status_code == 200 and "SwaggerUIBundle" in asset.text


def test_openapi_schema_lists_run_paths(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/metrics", "/api/health"} <= set(paths)


def test_cross_site_write_refused(client: Any, make_run: Any) -> None:
    run_id = make_run().id
    response = client.post(f"/api/runs/{run_id}/cancel", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and "cross-site" in response.json()["detail"]
    response = client.post(f"/api/runs/{run_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "queued"


def test_same_origin_and_script_writes_allowed(client: Any, make_run: Any) -> None:
    run_id = make_run().id
    same_origin = client.patch(f"/api/runs/{run_id}", json={"notes": "a"}, headers={"Origin": "http://127.0.0.1"})
    assert same_origin.status_code == 200
    assert client.patch(f"/api/runs/{run_id}", json={"notes": "b"}).status_code == 200  # no Origin: a script


def test_cross_site_read_allowed(client: Any, make_run: Any) -> None:
    run_id = make_run().id
    assert client.get(f"/api/runs/{run_id}", headers={"Origin": "https://elsewhere.example"}).status_code == 200
