"""Shared fixtures: database (SQLite and PostgreSQL), settings, engine, session, API client.

Tests that take `database_url` (directly or through settings/engine/session/client)
run twice: on SQLite (a real file in tmp_path) and on PostgreSQL (TEST_POSTGRES_URL).
Each test gets a clean, migrated database:
- SQLite: a copy of a template file migrated once per session;
- PostgreSQL: a schema private to this pytest process, migrated once, with every
  table truncated before each test.
Without PostgreSQL or Redis those tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from app.core.config import Settings, get_settings
from app.core.db import create_db_engine, get_engine, migrate

REPO = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TABLES = ("metric_point", "run_event", "worker_heartbeat", "run")


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, *,
               on_timeout: Callable[[], str] | None = None, poll_s: float = 0.25) -> float:
    """Seconds until condition() held. After timeout_s the test fails with `what` and, when given,
    what on_timeout() returns then (the logs of the processes under test, say)."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            detail = f"\n{on_timeout()}" if on_timeout is not None else ""
            pytest.fail(f"{what}: not within {timeout_s} s{detail}")
        time.sleep(poll_s)
    return time.monotonic() - began


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., float]:
    """wait_until(condition, timeout_s, what, on_timeout=None, poll_s=0.25): the tests' one polling loop.

    A fixture because a test module cannot import another module of tests/ (no packages,
    --import-mode=importlib); tests/e2e/conftest.py hands it to its Stack the same way.
    """
    return wait_until


def service_unavailable(service: str, error: object) -> None:
    """Skip locally; under CI a missing service is a failure, never a silent skip."""
    message = f"{service} is unreachable: {error}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI=true: the service must be running)", pytrace=False)
    pytest.skip(message)


def postgres_url_with_schema(schema: str) -> str:
    """POSTGRES_URL whose connections use `schema` (psycopg passes `options` to the server)."""
    return make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "trainboard.db"
    engine = create_db_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection checkpoints the WAL into the file
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[tuple[str, Engine]]:
    schema = f"trainboard_test_{os.getpid()}"
    admin = create_db_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as err:  # noqa: BLE001  (connection refused, auth, missing database…)
        admin.dispose()
        service_unavailable(f"PostgreSQL at {POSTGRES_URL}", err)
    url = postgres_url_with_schema(schema)
    engine = create_db_engine(url)
    migrate(engine)
    yield url, engine
    engine.dispose()
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def redis_url() -> str:
    """TEST_REDIS_URL, flushed before the test (a database number reserved for tests: 15 by default)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.flushdb()
    except redis.RedisError as err:
        service_unavailable(f"Redis at {REDIS_URL}", err)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, migrated database for this test."""
    if request.param == "sqlite":
        target = tmp_path / "trainboard.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url, engine = request.getfixturevalue("postgres_database")
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return url


@pytest.fixture
def empty_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second database of the test's backend with no tables at all (for migration tests)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    schema = f"trainboard_empty_{os.getpid()}"
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield postgres_url_with_schema(schema)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """make_settings(**overrides): fresh Settings from the environment, as the app reads them.

    Defaults: DATA_DIR in tmp_path, the test's database, a filesystem:// broker in
    DATA_DIR/broker, no API token, fast SSE polls, no watchdog passes during a test.
    """
    def make_settings(**overrides: Any) -> Settings:
        for name in Settings.model_fields:
            monkeypatch.delenv(name, raising=False)
        env = {
            "TRAINBOARD_ENV_FILE": "",  # a developer's .env must not leak into tests
            "DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": database_url,
            "SSE_POLL_INTERVAL_S": "0.05",
            "WATCHDOG_INTERVAL_S": "3600",
            **{key: str(value) for key, value in overrides.items()},
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return get_settings()

    yield make_settings
    get_settings.cache_clear()


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The process-wide engine (app.core.db.get_engine) for this test's settings."""
    get_engine.cache_clear()
    engine = get_engine()
    yield engine
    engine.dispose()
    get_engine.cache_clear()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def client_factory(settings_factory: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    """make_client(**setting_overrides): a started TestClient on an app with those settings."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.metrics import DEFAULT_METRICS_CACHE

    clients: list[TestClient] = []

    def make_client(**overrides: Any) -> TestClient:
        DEFAULT_METRICS_CACHE.clear()  # run ids repeat across the tests' databases
        # 127.0.0.1: a Host the app allows by default (ALLOWED_HOSTS), as a local browser sends it.
        client = TestClient(create_app(settings_factory(**overrides)), base_url="http://127.0.0.1")
        client.__enter__()  # runs the lifespan: migrations, folders, watchdog
        clients.append(client)
        return client

    yield make_client
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_factory: Callable[..., Any]) -> Any:
    return client_factory()


def copy_sample_subset(dest: Path, *, train_per_class: int, test_per_class: int) -> Path:
    """The first N images per class (by name) of each split of the built-in cifar10-sample, copied under `dest`."""
    from ml.data import SPLITS, sample_root

    source = sample_root()
    for split, per_class in zip(SPLITS, (train_per_class, test_per_class)):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            target = dest / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                shutil.copyfile(image, target / image.name)
    return dest


@pytest.fixture(scope="session")
def sample_subset(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """sample_subset(train_per_class, test_per_class): a copy of that slice of cifar10-sample, made once a session."""
    made: dict[tuple[int, int], Path] = {}

    def make(train_per_class: int, test_per_class: int) -> Path:
        key = (train_per_class, test_per_class)
        if key not in made:
            dest = tmp_path_factory.mktemp(f"cifar10-sample-{train_per_class}-{test_per_class}")
            made[key] = copy_sample_subset(dest, train_per_class=train_per_class, test_per_class=test_per_class)
        return made[key]

    return make


@pytest.fixture(scope="session")
def cifar_subset(sample_subset: Callable[[int, int], Path]) -> Path:
    """50 train and 10 test JPEGs per class of the built-in cifar10-sample (500/100)."""
    return sample_subset(50, 10)
