"""Real processes for end-to-end tests: uvicorn, Celery workers, `trainboard serve`, Redis and PostgreSQL.

Each test gets its own DATA_DIR (SQLite database, filesystem broker, artifacts)
or, for the production-like stack, its own PostgreSQL database and Redis
database number. Every process is started in its own session and killed with
its whole process group at teardown, so no test leaves a worker behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Its own database number, so that other tests' queues on the same Redis never meet this one's.
# TEST_E2E_REDIS_URL gives a developer's parallel runs a database of their own.
E2E_REDIS_URL = os.environ.get("TEST_E2E_REDIS_URL") or str(
    make_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")).set(database="14"))
STARTUP_TIMEOUT_S = 90


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_unavailable(service: str, error: object) -> None:
    """Skip locally; under CI=true a missing service fails the test instead."""
    message = f"{service} is unreachable: {error}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the service must be running)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    return free_port()


class Process:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill_group(signal.SIGKILL)
        self.kill_group(signal.SIGKILL)  # grandchildren too (serve's worker)
        self.popen.wait(10)
        self._log.close()


class Stack:
    """The web app and workers of one test, sharing one environment (database, broker, data dir)."""

    def __init__(self, env: dict[str, str], log_dir: Path, engine: Engine,
                 wait_until: Callable[..., float]) -> None:
        self.env = env
        self.log_dir = log_dir
        self.engine = engine  # for the test's own checks of what is in the database
        self.processes: list[Process] = []
        self.base_url = ""
        self._wait_until = wait_until  # tests/conftest.py's, so that every test polls the same way

    def wait_until(self, condition: Callable[[], object], timeout_s: float, what: str) -> float:
        """Seconds until condition() held; after timeout_s the test fails with `what` and every log."""
        return self._wait_until(condition, timeout_s, what, on_timeout=self.logs)

    def start(self, name: str, argv: list[str], **env: str) -> Process:
        process = Process(name, argv, {**self.env, **env}, self.log_dir)
        self.processes.append(process)
        return process

    def start_web(self, **env: str) -> Process:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        web = self.start("web", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                 "--port", str(port)], **env)
        self.wait_healthy(lambda health: True, web)
        return web

    def start_worker(self, name: str = "worker") -> Process:
        return self.start(name, [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                                 "--pool=solo", "--concurrency=1", "--loglevel=INFO",
                                 f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h"])

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def wait_healthy(self, accept: Callable[[dict[str, Any]], bool], *watched: Process,
                     timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        """Poll /api/health until `accept(health)`; fail early when a watched process exits."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            for process in watched or self.processes:
                if process.popen.poll() is not None:
                    pytest.fail(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
            try:
                last = httpx.get(f"{self.base_url}/api/health", timeout=5).json()
                if last.get("status") == "ok" and accept(last):
                    return last
            except httpx.HTTPError as err:
                last = err
            time.sleep(0.25)
        pytest.fail(f"not healthy within {timeout_s} s (last: {last})\n{self.logs()}")

    def wait_for_status(self, run_id: int, statuses: set[str], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.api() as api:
            while time.monotonic() < deadline:
                run = api.get(f"/api/runs/{run_id}").json()
                if run["status"] in statuses:
                    return run
                time.sleep(0.25)
        pytest.fail(f"run {run_id} still {run['status']} after {timeout_s} s\n{self.logs()}")

    def eval_points(self, run_id: int) -> dict[int, int]:
        """{step: number of evaluation metric points at that step} straight from the database."""
        with self.engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT step, count(*) FROM metric_point WHERE run_id = :run AND name IN "
                "('train/loss', 'train/acc', 'val/loss', 'val/acc', 'test/loss', 'test/acc') GROUP BY step"
            ), {"run": run_id}).all()
        return {step: count for step, count in rows}

    def point_ids(self, run_id: int) -> set[int]:
        with self.engine.connect() as connection:
            return set(connection.execute(text("SELECT id FROM metric_point WHERE run_id = :run"),
                                          {"run": run_id}).scalars())

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.engine.dispose()


def base_env(data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "BROKER_URL", "ARTIFACTS_DIR", "DATASETS_DIR", "TRAINBOARD_API_TOKEN")}
    env.update({
        "TRAINBOARD_ENV_FILE": "",  # a developer's .env must not leak in
        "DATA_DIR": str(data_dir),
        # The tests' image folders live under pytest's temporary folder: an allowed dataset root.
        "DATASET_ROOTS": str(data_dir.parent.parent),
        "WATCHDOG_INTERVAL_S": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def embedded_stack(tmp_path: Path, wait_until: Callable[..., float]) -> Iterator[Stack]:
    """SQLite in DATA_DIR and Kombu's filesystem broker: no server at all."""
    data_dir = tmp_path / "data"
    stack = Stack(base_env(data_dir), tmp_path, create_engine(f"sqlite:///{data_dir / 'trainboard.db'}"),
                  wait_until)
    yield stack
    stack.stop()


@pytest.fixture
def postgres_database_url() -> Iterator[str]:
    """TEST_POSTGRES_URL with a fresh schema of its own (cheaper than a database: no checkpoint on drop)."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    schema = f"trainboard_e2e_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as err:  # noqa: BLE001  (refused, auth, missing database…)
        admin.dispose()
        service_unavailable(f"PostgreSQL at {POSTGRES_URL}", err)
    # psycopg hands `options` to the server: every connection of every process uses that schema.
    yield make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def redis_broker_url() -> Iterator[str]:
    """E2E_REDIS_URL, emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(E2E_REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as err:
        service_unavailable(f"Redis at {E2E_REDIS_URL}", err)
    yield E2E_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def server_stack(tmp_path: Path, postgres_database_url: str, redis_broker_url: str,
                 wait_until: Callable[..., float]) -> Iterator[Stack]:
    """The docker-compose shape: PostgreSQL and Redis."""
    env = base_env(tmp_path / "data")
    env.update(DATABASE_URL=postgres_database_url, BROKER_URL=redis_broker_url)
    stack = Stack(env, tmp_path, create_engine(postgres_database_url), wait_until)
    yield stack
    stack.stop()
