"""Embedded mode: the web app and one Celery worker from a single command, with no server to install.

`trainboard serve` runs uvicorn in this process and the worker as a child
process (`celery -A worker.celery_app worker --pool=solo`). With the Settings
defaults both use SQLite and Kombu's filesystem transport under DATA_DIR; with
BROKER_URL=redis://… and DATABASE_URL=postgresql+psycopg://… they use those.

A supervisor thread (WorkerSupervisor) keeps the worker alive: a worker that
exits (crash, out-of-memory kill) or whose heartbeat row goes silent for
EMBEDDED_WORKER_SILENT_S while its process stays (stopped, deadlocked) is
killed with its training process, the runs it held are failed as lost, and a
new worker starts; the next queued run starts as soon as it is ready.

One Ctrl-C stops both: uvicorn shuts the web app down, then the worker gets
SIGTERM, a warm shutdown during which its running training stops at the next
step (worker.heartbeat), and SIGKILL if it is still alive after
WORKER_STOP_TIMEOUT_S. The worker runs in its own session, so that the
terminal's Ctrl-C reaches only this process and shutdown goes in that order.
The worker also exits when this process goes, however it goes: it asks the
kernel for SIGTERM on its parent's death (PR_SET_PDEATHSIG) and watches its
parent's pid (EMBEDDED_PARENT_VARIABLE, read in worker.celery_app).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress

from sqlalchemy.engine import make_url
from sqlmodel import Session

from app.core.config import EMBEDDED_PARENT_VARIABLE, Settings, get_settings
from app.core.db import get_engine, utcnow
from app.services import lifecycle

# A warm shutdown: the training stops at its next step, records it, and its process exits.
WORKER_STOP_TIMEOUT_S = 20.0
# The worker reads this to die with `trainboard serve` (worker.celery_app).
# A worker that has not beaten at all this long after its start (importing torch included) is replaced.
WORKER_STARTUP_LIMIT_S = 180.0
SUPERVISE_INTERVAL_S = 1.0


def worker_command(node: str | None = None) -> list[str]:
    """One worker process with one training at a time (`solo`: the task runs in the worker's main thread)."""
    node = node or f"embedded-{os.getpid()}"
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--pool=solo", "--concurrency=1", "--loglevel=INFO", f"--hostname={node}@%h"]


def start_worker(node: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The worker in a session of its own, told to die with this process (and this thread)."""
    env = {**os.environ, **(env or {}), EMBEDDED_PARENT_VARIABLE: str(os.getpid())}
    return subprocess.Popen(worker_command(node), start_new_session=True, env=env)


def stop_worker(worker: subprocess.Popen, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int:
    """Warm shutdown (SIGTERM), then SIGKILL (with its training process) after `timeout_s`; the exit code."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"worker {worker.pid} did not stop within {timeout_s:.0f} s; killing it", file=sys.stderr)
            kill_worker(worker)
    return worker.wait()


def kill_worker(worker: subprocess.Popen) -> None:
    """SIGKILL the worker's process group: the worker and the training process it supervises."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)
    with suppress(ProcessLookupError):
        worker.kill()
    worker.wait()


def exit_description(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


class WorkerSupervisor:
    """Keeps one embedded worker running: replaces it when it exits or its heartbeat goes silent.

    Every worker is started (and stopped) by the supervisor's own thread: the worker's
    parent-death signal follows the thread that started it.
    """

    def __init__(self, settings: Settings, *, name: str = "embedded", env: dict[str, str] | None = None,
                 interval_s: float = SUPERVISE_INTERVAL_S) -> None:
        self.settings = settings
        self.name = f"{name}-{os.getpid()}"
        self.env = env or {}
        self.interval_s = interval_s
        self.generation = 0
        self.replacements = 0
        self.process: subprocess.Popen | None = None
        self.node = ""
        self._spawned_at = 0.0
        self._seen_beat = False
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        self._started.wait()
        return self

    def request_stop(self) -> None:
        """Stop supervising and start stopping the worker, without waiting."""
        self._stopping.set()

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Stop supervising, then stop the worker (warm, SIGKILL after WORKER_STOP_TIMEOUT_S); waits."""
        self._stopping.set()
        self._thread.join(timeout_s + 30)

    def _run(self) -> None:
        self._spawn()
        self._started.set()
        try:
            while not self._stopping.wait(self.interval_s):
                problem = self._problem()
                if problem:
                    self._replace(problem)
        finally:
            if self.process is not None:
                stop_worker(self.process)

    def _spawn(self) -> None:
        self.generation += 1
        self.node = f"{self.name}-{self.generation}"
        self.process = start_worker(self.node, self.env)
        self._spawned_at = time.monotonic()
        self._seen_beat = False

    def _problem(self) -> str | None:
        """Why the worker must be replaced, or None while it is fine."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            return exit_description(code)
        try:
            with Session(get_engine()) as session:
                last = lifecycle.worker_last_seen(session=session, node=self.node, pid=self.process.pid)
        except Exception as err:  # the database blinked (or has no schema yet): the worker is not to blame
            if self._seen_beat:
                print(f"supervisor: cannot read the worker's heartbeat: {type(err).__name__}: {err}",
                      file=sys.stderr)
            return None
        self._seen_beat = self._seen_beat or last is not None
        if last is None:
            waited = time.monotonic() - self._spawned_at
            return f"did not report ready within {waited:.0f} s" if waited > WORKER_STARTUP_LIMIT_S else None
        silent_s = (utcnow() - last).total_seconds()
        if silent_s > self.settings.EMBEDDED_WORKER_SILENT_S:
            return f"has not beaten for {silent_s:.0f} s (stopped or deadlocked)"
        return None

    def _replace(self, problem: str) -> None:
        assert self.process is not None
        old_pid, old_node = self.process.pid, self.node
        print(f"supervisor: worker {old_pid} {problem}; replacing it", file=sys.stderr, flush=True)
        kill_worker(self.process)
        message = f"worker lost: the embedded worker {old_node} {problem}; it was killed and replaced"
        try:
            with Session(get_engine()) as session:
                lifecycle.fail_runs_of_worker(session=session, node=old_node, message=message)
        except Exception as err:  # the watchdog fails them later
            print(f"supervisor: cannot fail the runs of {old_node}: {err}", file=sys.stderr)
        self.replacements += 1
        self._spawn()
        print(f"supervisor: new worker pid {self.process.pid}", file=sys.stderr, flush=True)


def describe(settings: Settings) -> str:
    """Where the state lives, without passwords."""
    database = make_url(settings.DATABASE_URL).render_as_string(hide_password=True)
    broker = settings.BROKER_URL if settings.uses_filesystem_broker else \
        make_url(settings.BROKER_URL).render_as_string(hide_password=True)
    return f"database {database}, broker {broker}, artifacts {settings.ARTIFACTS_DIR}"


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (none without CUDA)."""
    import torch

    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def worker_environments(workers: int) -> list[dict[str, str]]:
    """One environment per embedded worker: worker i on GPU i (round robin when there are fewer
    GPUs); on the CPU, the cores split between the workers (torch reads OMP_NUM_THREADS)."""
    if workers == 1:
        return [{}]
    gpus = visible_gpus()
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(workers)]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            for _ in range(workers)]


def serve(host: str = "127.0.0.1", port: int = 8000, *, with_worker: bool = True, workers: int = 1) -> int:
    """Run the web app (and `workers` supervised workers) until Ctrl-C; returns the exit code."""
    import uvicorn

    os.environ.setdefault("BIND_HOST", host)  # the address served is an allowed Host (ALLOWED_HOSTS)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    supervisors = [WorkerSupervisor(settings, name=f"embedded{i}" if workers > 1 else "embedded", env=env).start()
                   for i, env in enumerate(worker_environments(workers))] if with_worker else []
    shown_host = f"[{host}]" if ":" in host else host
    pids = ", ".join(str(supervisor.pid) for supervisor in supervisors)
    worker_note = (f"worker pid{'s' if len(supervisors) > 1 else ''} {pids}" if supervisors
                   else "web only, --no-worker")
    print(f"Trainboard at http://{shown_host}:{port}  ({worker_note}; {describe(settings)}). "
          f"Press Ctrl-C to stop.", flush=True)
    try:
        # uvicorn handles SIGINT/SIGTERM itself, shuts down, then raises the signal again.
        # proxy_headers=False: the app itself trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS.
        uvicorn.run("app.main:app", host=host, port=port, log_level="info", proxy_headers=False)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not abandon a worker half-way; stop_worker is bounded anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for supervisor in supervisors:  # all at once: each waits for its own worker
            supervisor.request_stop()
        for supervisor in supervisors:
            supervisor.stop()
    return 0
