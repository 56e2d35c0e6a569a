"""The settings model: parsing, errors that name the variable, and the docs table in step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from vox_flow.config import Settings, load_settings, setting_errors, settings_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_list_every_setting_with_its_default() -> None:
    text = DOC.read_text()
    table = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert table == settings_table()
    for name in Settings.model_fields:
        assert f"`VOX_FLOW_{name.upper()}`" in table


def test_reads_prefixed_variables_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOX_FLOW_TASK_MODULES", "a.b, c")
    monkeypatch.setenv("VOX_FLOW_LEASE_SECONDS", "12.5")
    monkeypatch.setenv("LEASE_SECONDS", "99")
    settings = Settings()
    assert settings.task_modules == ["a.b", "c"]
    assert settings.lease_seconds == 12.5


def test_bad_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOX_FLOW_LEASE_SECONDS", "soon")
    with pytest.raises(ValidationError) as err:
        Settings()
    assert err.value.errors()[0]["loc"] == ("lease_seconds",)
    monkeypatch.setenv("VOX_FLOW_LEASE_SECONDS", "0.5")
    with pytest.raises(ValidationError, match="greater than 1"):
        Settings()


def test_store_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.store == f"sqlite:///{tmp_path / 'control.db'}"
    assert Settings(store_url="postgresql+psycopg://x/y").store == "postgresql+psycopg://x/y"


@pytest.mark.parametrize(
    ("variables", "variable", "reason"),
    [
        ({"VOX_FLOW_LEASE_SECONDS": "inf"}, "VOX_FLOW_LEASE_SECONDS", "finite number"),
        (
            {"VOX_FLOW_LEASE_SECONDS": "2", "VOX_FLOW_LEASE_RENEW_SECONDS": "10"},
            "VOX_FLOW_LEASE_RENEW_SECONDS",
            "must be shorter than VOX_FLOW_LEASE_SECONDS (2)",
        ),
        ({"VOX_FLOW_AUDIT_RETENTION_DAYS": "0"}, "VOX_FLOW_AUDIT_RETENTION_DAYS", ">= 1"),
        ({"VOX_FLOW_AUDIT_RETENTION_DAYS": "-1"}, "VOX_FLOW_AUDIT_RETENTION_DAYS", ">= 1"),
    ],
)
def test_values_that_would_turn_a_guarantee_off_are_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], variable: str, reason: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        load_settings()
    [(named, why)] = setting_errors(refused.value)
    assert named == variable
    assert reason.replace(">= 1", "greater than or equal to 1") in why


def test_the_otlp_exporter_needs_its_extra_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_otlp(name: str, *args: object) -> object:
        return None if name.startswith("opentelemetry.exporter.otlp") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_otlp)
    monkeypatch.setenv("VOX_FLOW_OTEL_EXPORTER", "otlp")
    with pytest.raises(ValidationError) as refused:
        load_settings()
    [(named, why)] = setting_errors(refused.value)
    assert named == "VOX_FLOW_OTEL_EXPORTER"
    assert "pip install 'vox_flow[otlp]'" in why
