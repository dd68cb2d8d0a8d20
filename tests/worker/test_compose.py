"""docker-compose.yml and the Dockerfile, checked without Docker: every command, path and setting they name exists."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("web", "worker")

# Settings whose defaults only work inside one process tree (a SQLite file and broker folders
# under the local DATA_DIR) or that are a deployment's secret: each container must be told them.
NEEDED_BY_CONTAINERS = ("DATABASE_URL", "BROKER_URL", "ARTIFACTS_DIR", "DATASETS_DIR", "TRAINBOARD_API_TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def assert_command_resolves(argv: list[str]) -> None:
    """The program's module or entry point exists in this project."""
    program = argv[0]
    if program == "uvicorn":
        module, _, attribute = next(a for a in argv[1:] if not a.startswith("-")).partition(":")
        assert hasattr(importlib.import_module(module), attribute), f"{module} has no {attribute}"
    elif program == "celery":
        from celery.app.utils import find_app

        app_name = argv[argv.index("-A") + 1]
        assert find_app(app_name).__class__.__name__ == "Celery", f"celery -A {app_name} finds no Celery app"
    elif program == "trainboard":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        module, _, function = scripts["trainboard"].partition(":")
        assert callable(getattr(importlib.import_module(module), function))
    elif program == "python" and argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
    elif program == "python" and argv[1] == "-c":
        compile(argv[2], "<healthcheck>", "exec")
    else:
        pytest.fail(f"unknown program in {argv}")


def test_compose_has_the_four_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"web", "worker", "redis", "postgres"}


def test_compose_app_commands_resolve(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        assert_command_resolves(as_argv(compose["services"][name]["command"]))
    worker = as_argv(compose["services"]["worker"]["command"])
    assert worker[:4] == ["celery", "-A", "worker.celery_app", "worker"] and "--pool=solo" in worker


def test_compose_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        if name in APP_SERVICES:
            assert test[0] == "CMD"
            assert_command_resolves(test[1:])


def test_compose_passes_needed_settings_to_web_and_worker(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    assert set(NEEDED_BY_CONTAINERS) <= fields
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        missing = [key for key in NEEDED_BY_CONTAINERS if key not in env]
        assert not missing, f"{name} is not given {missing}"
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{name} sets variables that Settings does not read: {unknown}"
    assert compose["services"]["web"]["environment"]["BROKER_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in compose["services"]["web"]["environment"]["DATABASE_URL"]


def test_compose_artifacts_volume_is_shared_by_web_and_worker(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    mounts = {}
    for name in APP_SERVICES:
        service = compose["services"][name]
        mounts[name] = dict(volume.split(":")[:2] for volume in service["volumes"])
        assert set(mounts[name]) <= declared
        assert mounts[name]["artifacts"] == service["environment"]["ARTIFACTS_DIR"]
        assert mounts[name]["datasets"] == service["environment"]["DATASETS_DIR"]
    assert mounts["web"]["artifacts"] == mounts["worker"]["artifacts"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"])


def test_compose_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "CPU" in (ROOT / "docker-compose.yml").read_text()  # the fallback is documented


def test_compose_app_services_wait_for_healthy_backends(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        depends = compose["services"][name]["depends_on"]
        assert depends == {"postgres": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}


def test_dockerfile_copy_sources_exist(dockerfile: list[tuple[str, str]]) -> None:
    copies = [args for instruction, args in dockerfile if instruction == "COPY"]
    assert copies
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for args in copies:
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored, f"COPY {source}, but .dockerignore leaves it out"


def test_dockerfile_base_user_and_cmd(dockerfile: list[tuple[str, str]]) -> None:
    instructions = dict(dockerfile)  # the last of each kind
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    assert instructions["USER"] not in ("root", "0")
    cmd = json.loads(instructions["CMD"])
    assert cmd[:2] == ["uvicorn", "app.main:app"]
    assert_command_resolves(cmd)
