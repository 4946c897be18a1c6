"""Settings: the documented file, environment overrides and the command line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from dicomweb_server.cli import build_settings
from dicomweb_server.config import DuplicatePolicy, Settings, load_settings

CONFIG = Path(__file__).parents[1] / "config" / "dicomweb-server.toml"


def test_documented_file_lists_every_option_with_its_default() -> None:
    documented = tomllib.loads(CONFIG.read_text())
    defaults = Settings()
    for section, model in defaults:
        for name in type(model).model_fields:
            optional = getattr(model, name) is None  # e.g. TLS paths, shown commented out
            if not optional:
                assert name in documented[section], f"{section}.{name} is not documented"
    assert load_settings(CONFIG) == defaults


def test_environment_overrides_file_and_cli_overrides_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[http]\nport = 9000\n[ingest]\nduplicate_policy = "reject"\n')
    monkeypatch.setenv("DICOMWEB_HTTP__PORT", "9100")
    monkeypatch.setenv("DICOMWEB_DIMSE__AET", "ENVAET")
    settings = load_settings(config)
    assert settings.http.port == 9100
    assert settings.ingest.duplicate_policy is DuplicatePolicy.REJECT
    settings = build_settings(
        config, http_port=9200, remote_ae={"PACS": {"host": "h", "port": 104}}
    )
    assert settings.http.port == 9200
    assert settings.dimse.aet == "ENVAET"
    assert settings.dimse.remote_aes["PACS"].port == 104


def test_invalid_values_are_refused_with_the_option_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[ingest]\nduplicate_policy = "sometimes"\n')
    with pytest.raises(ValidationError, match="duplicate_policy"):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_workers_default_to_two_per_core_and_follow_the_setting() -> None:
    import os

    from dicomweb_server.server import gunicorn_options

    assert gunicorn_options(Settings())["workers"] == 2 * (os.cpu_count() or 1)
    assert gunicorn_options(load_settings(None, http={"workers": 3}))["workers"] == 3
