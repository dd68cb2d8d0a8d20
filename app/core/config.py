"""One Settings object for the web app and the worker, read from the environment and `.env`.

Paths that are not set explicitly derive from DATA_DIR, so a single variable
moves all runtime state (database, broker folders, artifacts, datasets).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FILESYSTEM_BROKER = "filesystem://"
# Set by `trainboard serve` in its embedded workers' environment: the pid they must not outlive.
EMBEDDED_PARENT_VARIABLE = "TRAINBOARD_EMBEDDED_PARENT_PID"
MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    DATA_DIR: Path = Path("./data")
    # Empty means: derived from DATA_DIR in `_derive_defaults`.
    DATABASE_URL: str = ""
    BROKER_URL: str = ""
    ARTIFACTS_DIR: Path | None = None
    DATASETS_DIR: Path | None = None

    # None (or empty) keeps the API open; a value makes every mutating endpoint require it.
    TRAINBOARD_API_TOKEN: str | None = None

    # A running run whose worker has not written a heartbeat for this long is marked failed.
    HEARTBEAT_TIMEOUT_S: float = Field(default=60.0, gt=0)
    WATCHDOG_INTERVAL_S: float = Field(default=15.0, gt=0)
    # How often a training writes its heartbeat and progress, flushes metrics and polls for a cancel.
    HEARTBEAT_INTERVAL_S: float = Field(default=2.0, gt=0, le=10)
    # The longest a training may take; Redis' visibility timeout must exceed it, or
    # Redis redelivers a task that is still running to a second worker.
    MAX_RUN_SECONDS: int = Field(default=7 * 24 * 3600, gt=0)
    # A run redelivered more often than this (worker crashes every time) is failed.
    MAX_REDELIVERIES: int = Field(default=3, ge=0)
    # The web side must answer quickly when the broker is down instead of retrying forever.
    BROKER_CONNECT_TIMEOUT_S: float = Field(default=2.0, gt=0)
    TRAIN_QUEUE: str = "train"

    MAX_SWEEP_RUNS: int = Field(default=100, ge=1)
    METRICS_MAX_POINTS: int = Field(default=2000, ge=10)
    SSE_POLL_INTERVAL_S: float = Field(default=0.75, gt=0)
    SSE_KEEPALIVE_S: float = Field(default=15.0, gt=0)
    DB_ECHO: bool = False

    # --- Limits and access (README "Security"); every 422/413/429 they cause names the setting. ---
    # Host headers the app answers (anything else: 400, so DNS rebinding fails). Empty: localhost,
    # 127.0.0.1, ::1 and BIND_HOST. Comma-separated; "*" allows any, "*.example.com" a domain.
    ALLOWED_HOSTS: str = ""
    BIND_HOST: str = "127.0.0.1"  # set by `trainboard serve --host`
    # Proxies whose X-Forwarded-For/-Proto are believed (e.g. "127.0.0.1" behind a local nginx).
    # Unset: none, the client is the TCP peer.
    FORWARDED_ALLOW_IPS: str | None = None
    # Signs the login session cookies. Unset: random per process (a restart logs everyone out).
    SESSION_SECRET: str | None = None
    SESSION_MAX_AGE_S: int = Field(default=7 * 24 * 3600, ge=60)
    # Wrong tokens (login form or bearer header) per client address per window, then 429.
    AUTH_FAILURES_ALLOWED: int = Field(default=10, ge=1)
    AUTH_FAILURE_WINDOW_S: float = Field(default=300.0, gt=0)
    # The largest model the web process builds or queues, counted on torch's meta device.
    MAX_MODEL_PARAMETERS: int = Field(default=50_000_000, ge=1)
    # The widest conv block or hidden layer of the custom CNNs, and resnet18's largest upsample factor.
    MAX_MODEL_WIDTH: int = Field(default=2048, ge=1)
    MAX_UPSAMPLE: int = Field(default=8, ge=1)
    # Request bodies, counted while they stream in (chunked ones too): 413 beyond.
    MAX_REQUEST_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    MAX_UPLOAD_BYTES: int = Field(default=5 * 1024 * 1024, ge=1024)
    # Live streams (SSE): per client address and in all (429 beyond); each ends after this long
    # (EventSource reconnects), when its run ends, or when the client leaves.
    SSE_MAX_STREAMS_PER_CLIENT: int = Field(default=8, ge=1)
    SSE_MAX_STREAMS: int = Field(default=64, ge=1)
    SSE_MAX_STREAM_S: float = Field(default=3600.0, gt=0)
    # Visualisation files cached on disk per run (filters, activations, confusion): oldest go first.
    MAX_CACHED_VISUALIZATIONS: int = Field(default=200, ge=1)
    # Visualisation requests computing at once (model loads and forward passes in the web process); 429 beyond.
    VISUALIZE_MAX_CONCURRENT: int = Field(default=8, ge=1)
    # Hard stops (worker side). A run that has not stopped this long after its cancel (or after
    # MAX_RUN_SECONDS) has its training process killed and is recorded as cancelled, "forced".
    CANCEL_GRACE_S: float = Field(default=30.0, gt=0)
    # At most this many evaluations per run (epochs / eval_every), refused with 422 at launch.
    MAX_EVALUATIONS_PER_RUN: int = Field(default=1000, ge=1)
    # `trainboard serve`: a worker whose heartbeat is older than this (process stopped or
    # deadlocked) is killed and replaced; one that exits is replaced at once.
    EMBEDDED_WORKER_SILENT_S: float = Field(default=20.0, gt=0)
    # Datasets: paths must resolve inside DATASETS_DIR or one of these roots (comma-separated
    # or a JSON list); anything else is refused without saying whether it exists.
    DATASET_ROOTS: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # An uploaded archive: its bytes (counted as they stream in), then what it may unpack to.
    DATASET_UPLOAD_MAX_BYTES: int = Field(default=512 * 1024**2, ge=1)
    DATASET_MAX_MEMBERS: int = Field(default=200_000, ge=1)
    DATASET_MAX_UNPACKED_BYTES: int = Field(default=2 * 1024**3, ge=1)
    # An upload with one <class>/ tree is split into train/test with this test fraction and seed.
    DATASET_TEST_FRACTION: float = Field(default=0.2, gt=0, lt=1)
    DATASET_SPLIT_SEED: int = Field(default=0, ge=0)

    @field_validator("TRAINBOARD_API_TOKEN")
    @classmethod
    def _empty_token_means_open(cls, value: str | None) -> str | None:
        if value and len(value) < MIN_TOKEN_LENGTH:
            # A short token can be guessed despite the rate limit: refuse to start with one.
            raise ValueError(f"TRAINBOARD_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters "
                             f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        return value or None

    @property
    def allowed_hosts(self) -> list[str]:
        """ALLOWED_HOSTS as a list (lower case), or the local names and BIND_HOST."""
        given = [host.strip().lower() for host in self.ALLOWED_HOSTS.split(",") if host.strip()]
        return given or list(dict.fromkeys(["localhost", "127.0.0.1", "::1", self.BIND_HOST.lower()]))

    @field_validator("DATASET_ROOTS", mode="before")
    @classmethod
    def _roots_from_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        # Absolute paths, so that a later chdir (uvicorn --reload, celery -D) changes nothing.
        self.DATA_DIR = self.DATA_DIR.expanduser().resolve()
        self.ARTIFACTS_DIR = (self.ARTIFACTS_DIR or self.DATA_DIR / "artifacts").expanduser().resolve()
        self.DATASETS_DIR = (self.DATASETS_DIR or self.DATA_DIR / "datasets").expanduser().resolve()
        self.DATASET_ROOTS = [root.expanduser().resolve() for root in self.DATASET_ROOTS]
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR / 'trainboard.db'}"
        if not self.BROKER_URL:
            self.BROKER_URL = FILESYSTEM_BROKER
        return self

    @property
    def broker_dir(self) -> Path:
        """Root of the serverless filesystem broker's folders."""
        return self.DATA_DIR / "broker"

    @property
    def cache_dir(self) -> Path:
        """Decoded-dataset caches and thumbnails: the app's own, never inside a user's data folder."""
        return self.DATA_DIR / "cache"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.BROKER_URL.startswith("filesystem:")

    def broker_transport_options(self) -> dict[str, Any]:
        """Kombu transport options for BROKER_URL (folders for filesystem://, timeouts for Redis)."""
        if self.uses_filesystem_broker:
            queue = str(self.broker_dir / "queue")
            return {
                # One folder for both directions: the web app writes where the worker reads.
                "data_folder_in": queue,
                "data_folder_out": queue,
                "processed_folder": str(self.broker_dir / "processed"),
                "store_processed": False,
                # Celery's remote control uses fanout exchanges, which need this folder.
                "control_folder": str(self.broker_dir / "control"),
            }
        return {
            "visibility_timeout": self.MAX_RUN_SECONDS + 3600,
            "socket_connect_timeout": self.BROKER_CONNECT_TIMEOUT_S,
            "socket_timeout": max(self.BROKER_CONNECT_TIMEOUT_S, 5.0),
        }

    def ensure_dirs(self) -> None:
        """Create the runtime folders (the broker's only for filesystem://)."""
        for path in (self.DATA_DIR, self.ARTIFACTS_DIR, self.DATASETS_DIR):
            path.mkdir(parents=True, exist_ok=True)
        self.ensure_broker_dirs()

    def ensure_broker_dirs(self) -> None:
        """Create the filesystem broker's folders (nothing for other brokers)."""
        if self.uses_filesystem_broker:
            options = self.broker_transport_options()
            for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
                Path(options[key]).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings. Tests change the environment, then call `get_settings.cache_clear()`.

    TRAINBOARD_ENV_FILE names the dotenv file (default `.env`; empty: none).
    """
    env_file = os.environ.get("TRAINBOARD_ENV_FILE", ".env") or None
    return Settings(_env_file=env_file)
