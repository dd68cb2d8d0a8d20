"""Login with TRAINBOARD_API_TOKEN, the cookies it sets, and CSRF protection of cookie-authenticated API calls."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.pages.auth import LOGIN_FAILURES_ALLOWED, FailedLogins, safe_next

TOKEN = "page-token"


def _login(client: TestClient, token: str = TOKEN, next_url: str = "/") -> Any:
    return client.post("/login", data={"token": token, "next": next_url}, follow_redirects=False)


def _set_cookies(response: Any) -> list[str]:
    return [value for key, value in response.headers.multi_items() if key == "set-cookie"]


def test_login_sets_httponly_strict_cookies(token_client: TestClient) -> None:
    response = _login(token_client, next_url="/compare")
    assert response.status_code == 303
    assert response.headers["location"] == "/compare"
    token_cookie = next(c for c in _set_cookies(response) if c.startswith("trainboard_token="))
    csrf_cookie = next(c for c in _set_cookies(response) if c.startswith("trainboard_csrf="))
    assert "HttpOnly" in token_cookie and "SameSite=strict" in token_cookie and "Path=/" in token_cookie
    assert "HttpOnly" not in csrf_cookie and "SameSite=strict" in csrf_cookie  # the JS must read it
    assert token_client.cookies["trainboard_token"] == TOKEN
    assert len(token_client.cookies["trainboard_csrf"]) >= 32


def test_login_wrong_token_is_401_without_cookies(token_client: TestClient) -> None:
    response = _login(token_client, token="wrong")
    assert response.status_code == 401
    assert "That token is not right" in response.text
    assert not _set_cookies(response)


def test_login_after_too_many_wrong_tokens_is_429_even_with_the_right_one(token_client: TestClient) -> None:
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert _login(token_client, token="guess").status_code == 401
    blocked = _login(token_client)  # the right token, but this address is still cooling down
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0 and "Too many wrong tokens" in blocked.text
    assert not _set_cookies(blocked)


def test_failed_logins_window_expires() -> None:
    failures = FailedLogins(limit=2, window_s=0.2)
    failures.record("10.0.0.1")
    failures.record("10.0.0.1")
    assert failures.retry_after_s("10.0.0.1") > 0 and failures.retry_after_s("10.0.0.2") == 0
    time.sleep(0.25)
    assert failures.retry_after_s("10.0.0.1") == 0


@pytest.mark.parametrize("target, expected", [
    ("/runs/3", "/runs/3"), ("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil.example", "/"),
    ("", "/"), ("runs", "/"),
])
def test_login_next_stays_on_this_site(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_login_page_without_a_configured_token(client: TestClient) -> None:
    assert "nothing to log in to" in client.get("/login").text
    assert _login(client).status_code == 303


def test_pages_are_readable_without_login(token_client: TestClient, seed: Any) -> None:
    run_id = seed.run("succeeded", points=10)
    for path in ("/", f"/runs/{run_id}", "/runs/new", f"/compare?ids={run_id}", "/login"):
        response = token_client.get(path)
        assert response.status_code == 200, path
        assert 'data-can-write="false"' in response.text
        assert "Read-only view" in response.text and 'href="/login?next=' in response.text


def test_pages_after_login_can_write(token_client: TestClient) -> None:
    _login(token_client)
    page = token_client.get("/").text
    assert 'data-can-write="true"' in page and "Read-only view" not in page
    assert '<form method="post" action="/logout">' in page


def test_cookie_without_csrf_header_is_403(token_client: TestClient) -> None:
    _login(token_client)
    response = token_client.post("/api/runs", json={"model": "task1"})
    assert response.status_code == 403
    assert "X-CSRF-Token" in response.json()["detail"]


def test_cookie_with_wrong_csrf_header_is_403(token_client: TestClient) -> None:
    _login(token_client)
    response = token_client.post("/api/runs", json={"model": "task1"}, headers={"X-CSRF-Token": "guess"})
    assert response.status_code == 403


def test_cookie_with_csrf_header_passes(token_client: TestClient, seed: Any) -> None:
    _login(token_client)
    headers = {"X-CSRF-Token": token_client.cookies["trainboard_csrf"]}
    run_id = seed.run()
    assert token_client.patch(f"/api/runs/{run_id}", json={"notes": "ok"}, headers=headers).status_code == 200
    assert token_client.post(f"/api/runs/{run_id}/cancel", headers=headers).status_code == 202
    assert token_client.delete(f"/api/runs/{run_id}", headers=headers).status_code == 204


def test_bearer_token_needs_no_csrf(token_client: TestClient, seed: Any) -> None:
    run_id = seed.run()
    response = token_client.patch(f"/api/runs/{run_id}", json={"notes": "ok"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_wrong_cookie_is_401_even_with_csrf(token_client: TestClient, seed: Any) -> None:
    token_client.cookies.set("trainboard_token", "wrong")
    token_client.cookies.set("trainboard_csrf", "same")
    response = token_client.patch(f"/api/runs/{seed.run()}", json={"notes": "x"}, headers={"X-CSRF-Token": "same"})
    assert response.status_code == 401


def test_reads_need_neither_token_nor_csrf(token_client: TestClient, seed: Any) -> None:
    run_id = seed.run()
    for path in ("/api/runs", f"/api/runs/{run_id}", f"/api/runs/{run_id}/metrics"):
        assert token_client.get(path).status_code == 200


def test_logged_in_page_reissues_a_lost_csrf_cookie(token_client: TestClient) -> None:
    _login(token_client)
    del token_client.cookies["trainboard_csrf"]
    response = token_client.get("/")
    assert any(c.startswith("trainboard_csrf=") for c in _set_cookies(response))


def test_logout_needs_the_form_csrf_and_clears_cookies(token_client: TestClient) -> None:
    _login(token_client)
    assert token_client.post("/logout", data={"csrf": "guess"}, follow_redirects=False).status_code == 403
    response = token_client.post("/logout", data={"csrf": token_client.cookies["trainboard_csrf"]},
                                 follow_redirects=False)
    assert response.status_code == 303
    cleared = _set_cookies(response)
    assert any(c.startswith('trainboard_token=""') or c.startswith("trainboard_token=;") for c in cleared), cleared
    assert "trainboard_token" not in token_client.cookies
    assert 'data-can-write="false"' in token_client.get("/").text
