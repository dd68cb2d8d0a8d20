"""The container stack, checked without containers: what `docker compose up` needs from this repository.

The real check builds the images and trains a run through the containerised API
(the compose-offline `check.sh` beside the checkout with SCALE=2, podman, ~8 min the first time): too slow
and too privileged for CI. These tests keep what it showed true between its runs:
every command and healthcheck starts something that exists, every variable is one
Settings reads, web and workers see the same datasets and artifacts, the images can be
swapped where Docker Hub is out of reach, and compose.cpu.yml drops only the GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("web", "worker")
# Settings whose defaults only work inside one process tree (a SQLite file and broker folders
# under the local DATA_DIR) or that are a deployment's secret: each container must be told them.
NEEDED_BY_CONTAINERS = ("DATABASE_URL", "BROKER_URL", "ARTIFACTS_DIR", "DATASETS_DIR", "TRAINBOARD_API_TOKEN")
RESET = object()


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!reset` tag (an override that removes a key)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_compose(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR:-default} / ${VAR} substitution, recursively."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] or ""), value)
    return value


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings key by key, `!reset` removes, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    return override


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(load_compose("docker-compose.yml"), {})


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


def test_compose_app_commands_and_healthchecks_resolve(compose: dict[str, Any], dockerfile: list[tuple[str, str]]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert_command_resolves(as_argv(service["command"]))
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert_command_resolves(test[1:])
    assert_command_resolves(json.loads(dict(dockerfile)["CMD"]))  # the image's own default (the web app)


def test_compose_env_is_read_by_settings_and_names_the_services(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    assert set(NEEDED_BY_CONTAINERS) <= fields
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        missing = [key for key in NEEDED_BY_CONTAINERS if key not in env]
        assert not missing, f"{name} is not given {missing}"
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{name} sets variables that Settings does not read: {unknown}"
        # The URLs reach the other containers by their service names, and Settings accepts them.
        settings = Settings(_env_file=None, **{key: value for key, value in env.items() if value != ""})
        assert make_url(settings.DATABASE_URL).host in compose["services"]
        assert make_url(settings.BROKER_URL).host in compose["services"]


def test_compose_web_and_workers_share_datasets_and_artifacts(compose: dict[str, Any]) -> None:
    """The web app checks a dataset path and serves checkpoints that the workers read and write."""
    declared = set(compose["volumes"])
    mounts = {}
    for name in APP_SERVICES:
        service = compose["services"][name]
        mounts[name] = {target: source for source, target, *_ in (volume.split(":") for volume in service["volumes"])}
        env = service["environment"]
        for setting in ("ARTIFACTS_DIR", "DATASETS_DIR"):
            assert mounts[name].get(env[setting]) in declared, f"{name}'s {setting} is not on a named volume"
    assert mounts["web"] == mounts["worker"]
    assert compose["services"]["web"]["environment"] == compose["services"]["worker"]["environment"]


def test_compose_images_are_overridable(dockerfile: list[tuple[str, str]]) -> None:
    """Without Docker Hub: BASE_IMAGE, REDIS_IMAGE and POSTGRES_IMAGE swap in local images."""
    raw = load_compose("docker-compose.yml")
    default = interpolate(raw, {})
    local = interpolate(raw, {"BASE_IMAGE": "localhost/py:1", "REDIS_IMAGE": "localhost/r:7",
                              "POSTGRES_IMAGE": "localhost/pg:15"})
    assert default["services"]["redis"]["image"] == "redis:7-alpine"
    assert default["services"]["postgres"]["image"] == "postgres:16-alpine"
    assert local["services"]["redis"]["image"] == "localhost/r:7"
    assert local["services"]["postgres"]["image"] == "localhost/pg:15"
    # The build arg reaches the Dockerfile: declared before FROM, which uses it, defaulting to the official image.
    args_before_from = [args for instruction, args in dockerfile[:[i for i, _ in dockerfile].index("FROM")]
                        if instruction == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim" in args_before_from
    assert dict(dockerfile)["FROM"] == "${BASE_IMAGE}"
    declared_args = {args.split("=", 1)[0] for instruction, args in dockerfile if instruction == "ARG"}
    for name in APP_SERVICES:
        build_args = local["services"][name]["build"]["args"]
        assert set(build_args) <= declared_args
        assert build_args["BASE_IMAGE"] == "localhost/py:1" and default["services"][name]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"


def test_compose_cpu_override_drops_only_the_gpu_reservation(compose: dict[str, Any]) -> None:
    assert "deploy" in compose["services"]["worker"]  # a GPU by default
    cpu = merge(compose, interpolate(load_compose("compose.cpu.yml"), {}))
    assert "deploy" not in cpu["services"]["worker"]
    without_deploy = {key: value for key, value in compose["services"]["worker"].items() if key != "deploy"}
    assert cpu["services"]["worker"] == without_deploy
    assert {name: s for name, s in cpu["services"].items() if name != "worker"} == \
        {name: s for name, s in compose["services"].items() if name != "worker"}


def test_dockerfile_copy_sources_exist_and_run_as_a_user(dockerfile: list[tuple[str, str]]) -> None:
    copies = [args for instruction, args in dockerfile if instruction == "COPY"]
    assert copies
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for args in copies:
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored, f"COPY {source}, but .dockerignore leaves it out"
    assert dict(dockerfile)["USER"] not in ("root", "0")
