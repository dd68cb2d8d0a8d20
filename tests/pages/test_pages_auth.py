"""Login with TRAINBOARD_API_TOKEN, the cookies it sets, and CSRF protection of cookie-authenticated API calls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core import security
from app.core.security import FailedAttempts, safe_next

LOGIN_FAILURES_ALLOWED = Settings.model_fields["AUTH_FAILURES_ALLOWED"].default

TOKEN = "page-token-0123456789"


def _login(client: TestClient, token: str = TOKEN, next_url: str = "/", headers: dict[str, str] | None = None) -> Any:
    return client.post("/login", data={"token": token, "next": next_url}, headers=headers, follow_redirects=False)


def _set_cookies(response: Any) -> list[str]:
    return [value for key, value in response.headers.multi_items() if key == "set-cookie"]


def test_login_sets_httponly_strict_cookies(token_client: TestClient) -> None:
    response = _login(token_client, next_url="/compare")
    assert response.status_code == 303
    assert response.headers["location"] == "/compare"
    session_cookie = next(c for c in _set_cookies(response) if c.startswith("trainboard_session="))
    csrf_cookie = next(c for c in _set_cookies(response) if c.startswith("trainboard_csrf="))
    assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie and "Path=/" in session_cookie
    assert "HttpOnly" not in csrf_cookie and "SameSite=strict" in csrf_cookie  # the JS must read it
    assert len(token_client.cookies["trainboard_csrf"]) >= 32


def test_login_cookie_is_a_signed_session_not_the_token(token_client: TestClient) -> None:
    _login(token_client)
    session = token_client.cookies["trainboard_session"]
    assert TOKEN not in session and "trainboard_token" not in token_client.cookies
    assert token_client.get("/api/runs").status_code == 200
    session_id, expiry, mac = session.split(".")
    forged = f"{session_id}.{int(expiry) + 10**6}.{mac}"  # a longer life without the server's key
    token_client.cookies.set("trainboard_session", forged)
    assert token_client.get("/api/runs").status_code == 401


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


def test_failed_logins_window_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock the test moves: on a busy box real sleeps could outlast the window before the first check.
    now = [1000.0]
    monkeypatch.setattr(security, "time", SimpleNamespace(monotonic=lambda: now[0]))
    failures = FailedAttempts(limit=2, window_s=60)
    failures.record("10.0.0.1")
    failures.record("10.0.0.1")
    assert failures.retry_after_s("10.0.0.1") > 0 and failures.retry_after_s("10.0.0.2") == 0
    now[0] += 59
    assert failures.retry_after_s("10.0.0.1") > 0
    now[0] += 2
    assert failures.retry_after_s("10.0.0.1") == 0


@pytest.mark.parametrize("target, expected", [
    ("/runs/3", "/runs/3"), ("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil.example", "/"),
    ("", "/"), ("runs", "/"), ("/\t/evil.example", "/"), ("/\n/evil.example", "/"), ("/ /evil.example", "/"),
    ("/\u3000/evil.example", "/"),
])
def test_login_next_stays_on_this_site(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_login_page_without_a_configured_token(client: TestClient) -> None:
    assert "nothing to log in to" in client.get("/login").text
    assert _login(client).status_code == 303


def test_login_page_with_a_tab_in_next_links_home(token_client: TestClient) -> None:
    page = token_client.get("/login?next=/%09/evil.example").text
    assert '<input type="hidden" name="next" value="/">' in page
    assert 'value="/\t/evil.example"' not in page and 'href="/\t' not in page


def test_pages_without_login_redirect_to_login(token_client: TestClient, seed: Any) -> None:
    run_id = seed.run("succeeded", points=10)
    for path in ("/", f"/runs/{run_id}", "/runs/new", f"/compare?ids={run_id}", "/report"):
        response = token_client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=/"), path
    assert token_client.get("/login").status_code == 200
    assert token_client.get("/api/health").status_code == 200


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
    token_client.cookies.set("trainboard_session", "wrong")
    token_client.cookies.set("trainboard_csrf", "same")
    response = token_client.patch(f"/api/runs/{seed.run()}", json={"notes": "x"}, headers={"X-CSRF-Token": "same"})
    assert response.status_code == 401


def test_reads_need_a_login_but_no_csrf(token_client: TestClient, seed: Any) -> None:
    run_id = seed.run()
    paths = ("/api/runs", f"/api/runs/{run_id}", f"/api/runs/{run_id}/metrics", f"/api/runs/{run_id}/events",
             f"/api/runs/{run_id}/checkpoint", f"/api/runs/{run_id}/visualize", "/api/models")
    for path in paths:
        assert token_client.get(path).status_code == 401, path
    _login(token_client)
    for path in paths[:3]:
        assert token_client.get(path).status_code == 200, path


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
    assert any(c.startswith('trainboard_session=""') or c.startswith("trainboard_session=;") for c in cleared), cleared
    assert "trainboard_session" not in token_client.cookies
    assert token_client.get("/", follow_redirects=False).status_code == 303


def test_logout_ends_the_session_for_a_copy_of_the_cookie(token_client: TestClient) -> None:
    _login(token_client)
    stolen = token_client.cookies["trainboard_session"]
    token_client.post("/logout", data={"csrf": token_client.cookies["trainboard_csrf"]})
    token_client.cookies.set("trainboard_session", stolen)
    assert token_client.get("/api/runs").status_code == 401


def test_wrong_bearer_tokens_are_rate_limited_like_logins(token_client: TestClient) -> None:
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert token_client.get("/api/runs", headers={"Authorization": "Bearer guess"}).status_code == 401
    blocked = token_client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert "AUTH_FAILURES_ALLOWED" in blocked.json()["detail"]
    assert _login(token_client).status_code == 429  # the login form shares the count


def test_forwarded_for_is_ignored_unless_the_peer_is_trusted(token_client: TestClient) -> None:
    for number in range(LOGIN_FAILURES_ALLOWED):
        assert _login(token_client, token="guess", headers={"X-Forwarded-For": f"10.0.0.{number}"}).status_code == 401
    assert _login(token_client, headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 429


def test_forwarded_for_from_a_trusted_proxy_names_the_client(client_factory: Any) -> None:
    client = client_factory(TRAINBOARD_API_TOKEN=TOKEN, FORWARDED_ALLOW_IPS="testclient")
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert _login(client, token="guess", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 401
    assert _login(client, headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 303
