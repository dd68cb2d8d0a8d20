"""Embedded mode: the web app and one Celery worker from a single command, with no server to install.

`trainboard serve` runs uvicorn in this process and the worker as a child
process (`celery -A worker.celery_app worker --pool=solo`). With the Settings
defaults both use SQLite and Kombu's filesystem transport under DATA_DIR; with
BROKER_URL=redis://… and DATABASE_URL=postgresql+psycopg://… they use those.

One Ctrl-C stops both: uvicorn shuts the web app down, then the worker gets
SIGTERM, a warm shutdown during which its running training stops at the next
step (worker.heartbeat), and SIGKILL if it is still alive after
WORKER_STOP_TIMEOUT_S. The worker runs in its own session, so that the
terminal's Ctrl-C reaches only this process and shutdown goes in that order;
on Linux it also dies with this process if this one is killed outright.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from contextlib import suppress

from sqlalchemy.engine import make_url

from app.core.config import Settings, get_settings

WORKER_STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_command() -> list[str]:
    """One worker process with one training at a time (`solo`: the task runs in the worker's main thread)."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--pool=solo", "--concurrency=1", "--loglevel=INFO", f"--hostname=embedded-{os.getpid()}@%h"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the worker when `trainboard serve` dies, even by SIGKILL."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_worker() -> subprocess.Popen:
    # Called before uvicorn starts any thread, so that preexec_fn is safe to use.
    return subprocess.Popen(worker_command(), start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop_worker(worker: subprocess.Popen, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int:
    """Warm shutdown (SIGTERM), then SIGKILL after `timeout_s`; returns the exit code."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"worker {worker.pid} did not stop within {timeout_s:.0f} s; killing it", file=sys.stderr)
            worker.kill()
    return worker.wait()


def describe(settings: Settings) -> str:
    """Where the state lives, without passwords."""
    database = make_url(settings.DATABASE_URL).render_as_string(hide_password=True)
    broker = settings.BROKER_URL if settings.uses_filesystem_broker else \
        make_url(settings.BROKER_URL).render_as_string(hide_password=True)
    return f"database {database}, broker {broker}, artifacts {settings.ARTIFACTS_DIR}"


def serve(host: str = "127.0.0.1", port: int = 8000, *, with_worker: bool = True) -> int:
    """Run the web app (and a worker) until Ctrl-C; returns the exit code."""
    import uvicorn

    os.environ.setdefault("BIND_HOST", host)  # the address served is an allowed Host (ALLOWED_HOSTS)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    worker = start_worker() if with_worker else None
    shown_host = f"[{host}]" if ":" in host else host
    worker_note = f"worker pid {worker.pid}" if worker else "web only, --no-worker"
    print(f"Trainboard at http://{shown_host}:{port}  ({worker_note}; {describe(settings)}). "
          f"Press Ctrl-C to stop.", flush=True)
    try:
        # uvicorn handles SIGINT/SIGTERM itself, shuts down, then raises the signal again.
        # proxy_headers=False: the app itself trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS.
        uvicorn.run("app.main:app", host=host, port=port, log_level="info", proxy_headers=False)
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            # A second Ctrl-C must not abandon the worker half-way; stop_worker is bounded anyway.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stop_worker(worker)
    return 0
