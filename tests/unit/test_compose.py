"""compose/: every service runs a real command, sets only real settings, and is wired right.

There is no Docker engine here, so this is a structural check, not `docker compose config`.
It needs PyYAML (not a vox_flow dependency: proposed for the `test` extra).
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from vox_flow.cli import build_parser
from vox_flow.config import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
PIN_NOTE = "# digest: pin before deploying"


@pytest.fixture(scope="module")
def text() -> str:
    return (COMPOSE / "compose.yaml").read_text()


@pytest.fixture(scope="module")
def services(text: str) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(text)
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def test_the_deployment_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"redis", "postgres", "control", "worker", "beat", "flower"}
    assert services["beat"]["deploy"]["replicas"] == 2
    # Scalable: nothing that two replicas of a worker could not share.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_the_broker_fsyncs_every_write(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"


def test_every_vox_flow_command_parses(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    listed = parser.format_help()
    ran = []
    for name, service in services.items():
        command = service.get("command")
        if not command or command[0] != "vox-flow":
            continue
        assert command[1] in listed, f"{name}: `vox-flow {command[1]}` is not in --help"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown option
        ran.append(command[1])
    assert sorted(ran) == ["beat", "control", "worker"]


def test_flower_runs_unmodified_on_the_app(services: dict[str, dict[str, Any]]) -> None:
    from celery.bin.celery import celery
    from flower.options import options

    command = services["flower"]["command"]
    assert command[:4] == ["celery", "-A", "vox_flow.app", "flower"]
    assert "flower" in celery.commands
    module, _, attribute = command[2].partition(":")
    assert hasattr(importlib.import_module(module), attribute or "app")
    for argument in command[4:]:
        name, _, _value = argument.removeprefix("--").partition("=")
        assert name in options, f"flower has no option --{name}"
    assert services["flower"]["profiles"] == ["monitoring"]


def _vox_flow_variables(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("VOX_FLOW_"):
                found[key] = str(value)
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for key, value in re.findall(r"(VOX_FLOW_\w+)=(\S+)", dockerfile):
        found[key] = value
    return found


def test_every_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    variables = _vox_flow_variables(services)
    fields = {key: key.removeprefix("VOX_FLOW_").lower() for key in variables}
    unknown = sorted(key for key, field in fields.items() if field not in Settings.model_fields)
    assert not unknown, f"not settings: {unknown}"
    # The values must validate too (interpolated ones are only known at deploy time).
    values = {fields[k]: v for k, v in variables.items() if "${" not in v}
    Settings(**values)
    assert "VOX_FLOW_BROKER_URL" in variables


def test_dependencies_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for needed in service.get("depends_on") or {}:
            assert needed in services, f"{name} depends on unknown service {needed}"
            assert needed != name


def test_vox_flow_services_build_from_the_repo(services: dict[str, dict[str, Any]]) -> None:
    for name in ("control", "worker", "beat", "flower"):
        build = services[name]["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).is_file(), name
    assert "pip install" in (COMPOSE / "Dockerfile").read_text()


def test_images_are_pinned_or_say_they_are_not(text: str) -> None:
    images = [line for line in text.splitlines() if line.strip().startswith("image:")]
    assert images
    for line in images:
        image = shlex.split(line.split(":", 1)[1], comments=True)[0]
        if image == "vox_flow:local":
            continue  # built here from compose/Dockerfile
        assert "@sha256:" in image or PIN_NOTE in line, line
