"""Settings validation, environment overrides, and that every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from feedbackbot.errors import SettingsError
from feedbackbot.settings import AppSettings, BatchSettings, EnrichmentSettings, IngestSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_valid() -> None:
    settings = load_settings(AppSettings, {}, environ={})

    assert settings.db_path == "data/feedback.duckdb"
    assert settings.sentiment_model == "builtin"


def test_bad_type_names_key_type_and_value() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(AppSettings, {"torch_threads": "many"}, environ={})

    message = str(caught.value)
    assert "torch_threads='many'" in message
    assert "expected int" in message


def test_unknown_key_lists_known_keys() -> None:
    with pytest.raises(SettingsError, match="expected one of .*db_path"):
        load_settings(AppSettings, {"db_file": "x.duckdb"}, environ={})


def test_environment_overrides_file() -> None:
    environ = {
        "FEEDBACKBOT_TORCH_THREADS": "3",
        "FEEDBACKBOT_ADMIN_NOTIFY_URLS": "json://127.0.0.1:9/a mailto://u:secret@127.0.0.1:25",
    }

    settings = load_settings(AppSettings, {"torch_threads": 1}, environ=environ)

    assert settings.torch_threads == 3
    assert [url.get_secret_value() for url in settings.admin_notify_urls] == [
        "json://127.0.0.1:9/a",
        "mailto://u:secret@127.0.0.1:25",
    ]


def test_secret_urls_masked_in_repr() -> None:
    settings = load_settings(AppSettings, {"customer_notify_url": "mailtos://u:hunter2@smtp.example.com"}, environ={})

    assert "hunter2" not in repr(settings)


def test_neutral_band_order_checked() -> None:
    with pytest.raises(SettingsError, match="neutral_low"):
        load_settings(EnrichmentSettings, {"neutral_low": 0.8, "neutral_high": 0.2})


@pytest.mark.parametrize(("key", "value"), [("max_batch_size", 0), ("batch_wait_timeout_s", -1)])
def test_batch_bounds_checked(key: str, value: float) -> None:
    with pytest.raises(SettingsError, match=key):
        load_settings(BatchSettings, {key: value})


@pytest.mark.parametrize("model", [AppSettings, BatchSettings, EnrichmentSettings, IngestSettings])
def test_every_setting_described_in_code(model: type) -> None:
    undocumented = [name for name, field in model.model_fields.items() if not field.description]

    assert undocumented == []


@pytest.mark.parametrize("model", [AppSettings, BatchSettings, EnrichmentSettings, IngestSettings])
def test_every_setting_in_configuration_doc(model: type) -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "docs" / "configuration.md").read_text(), re.M))

    assert set(model.model_fields) - documented == set()


def test_serve_config_args_valid() -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    application = config["applications"][0]

    load_settings(AppSettings, application["args"], environ={})
    for deployment in application["deployments"]:
        model = {"Enrichment": EnrichmentSettings, "Ingest": IngestSettings}.get(deployment["name"], BatchSettings)
        if "user_config" in deployment:
            load_settings(model, deployment["user_config"])


def test_serve_config_single_writer() -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    deployments = {item["name"]: item for item in config["applications"][0]["deployments"]}

    assert deployments["Persistence"]["autoscaling_config"]["max_replicas"] == 1
    assert set(deployments) == {"Ingest", "Validation", "Enrichment", "Persistence", "Notification"}
    for deployment in deployments.values():
        assert "autoscaling_config" in deployment
        assert "max_ongoing_requests" in deployment
        assert "num_cpus" in deployment["ray_actor_options"]
