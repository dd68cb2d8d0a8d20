"""Settings: defaults derived from DATA_DIR, environment overrides, broker options, the Celery app."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings, get_settings


def test_settings_defaults_derive_from_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path)
    assert settings.DATABASE_URL == f"sqlite:///{tmp_path / 'trainboard.db'}"
    assert settings.BROKER_URL == "filesystem://"
    assert settings.ARTIFACTS_DIR == tmp_path / "artifacts"
    assert settings.DATASETS_DIR == tmp_path / "datasets"
    assert settings.TRAINBOARD_API_TOKEN is None
    assert settings.HEARTBEAT_TIMEOUT_S == 60


def test_settings_read_environment_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("TRAINBOARD_API_TOKEN=from-file-0123456789\nHEARTBEAT_TIMEOUT_S=5\n")
    monkeypatch.setenv("TRAINBOARD_ENV_FILE", str(env_file))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("HEARTBEAT_TIMEOUT_S", "7")  # the environment wins over the file
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.TRAINBOARD_API_TOKEN == "from-file-0123456789"
        assert settings.HEARTBEAT_TIMEOUT_S == 7
        assert settings.DATA_DIR == tmp_path / "d"
        assert get_settings() is settings  # cached
    finally:
        get_settings.cache_clear()


def test_settings_empty_token_means_open_api(tmp_path: Path) -> None:
    assert Settings(_env_file=None, DATA_DIR=tmp_path, TRAINBOARD_API_TOKEN="").TRAINBOARD_API_TOKEN is None


def test_settings_filesystem_broker_folders_are_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path)
    options = settings.broker_transport_options()
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queue")
    assert options["processed_folder"] == str(tmp_path / "broker" / "processed")
    settings.ensure_dirs()
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        assert Path(options[key]).is_dir()


def test_settings_redis_visibility_timeout_exceeds_max_run_seconds(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path, BROKER_URL="redis://localhost:6379/0",
                        MAX_RUN_SECONDS=3600)
    assert settings.broker_transport_options()["visibility_timeout"] > 3600


def test_celery_app_is_configured_from_settings(tmp_path: Path) -> None:
    from celery import Celery

    from app.core.celery import TRAIN_TASK, celery_app, configure_celery
    from worker import celery_app as worker_side

    assert worker_side.celery_app is celery_app  # one app: the worker only adds its start-up hooks
    assert celery_app.main == "trainboard"
    assert "worker.tasks" in celery_app.conf.include
    app = Celery("check")
    configure_celery(app, Settings(_env_file=None, DATA_DIR=tmp_path, BROKER_URL="redis://127.0.0.1:6379/0",
                                   MAX_RUN_SECONDS=100))
    conf = app.conf
    assert conf.task_ignore_result and conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.broker_connection_retry_on_startup
    assert conf.broker_transport_options["visibility_timeout"] > 100
    assert conf.task_routes[TRAIN_TASK] == {"queue": "train"}


def test_celery_app_does_not_import_torch(tmp_path: Path) -> None:
    """The web app imports app.core.celery to send tasks; neither it nor the worker's side drags torch or ml in."""
    import subprocess
    import sys

    code = "import sys, app.core.celery, worker.celery_app; print('torch' in sys.modules, any(m.startswith('ml') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2],
                            env={"TRAINBOARD_ENV_FILE": "", "DATA_DIR": str(tmp_path),
                                 "PATH": "/usr/bin:/bin"})
    assert result.stdout.split() == ["False", "False"]


def test_celery_worker_start_creates_broker_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.signals import worker_init

    import worker.celery_app  # noqa: F401  (connects the signal handler)

    monkeypatch.setenv("TRAINBOARD_ENV_FILE", "")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        worker_init.send(sender=None)
        assert (tmp_path / "broker" / "queue").is_dir() and (tmp_path / "broker" / "processed").is_dir()
    finally:
        get_settings.cache_clear()
