"""One settings class, one parser: every section reads ``FERRY_<FIELD>`` by the same rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.server.core.settings import FleetSettings, Settings, SettingsError


def test_the_fleet_section_is_read_by_the_same_parser() -> None:
    settings = Settings.from_env(
        {
            "FERRY_DATA_DIR": "/tmp/x",
            "FERRY_ROLLOUT_TICK_S": "0.25",
            "FERRY_START_ROLLOUT_ENGINE": "no",
            "FERRY_DESIRED_STATE_TTL_S": "600",
        }
    )
    assert settings.data_dir == Path("/tmp/x")
    assert settings.fleet == FleetSettings(
        rollout_tick_s=0.25, start_rollout_engine=False, desired_state_ttl_s=600
    )


def test_a_malformed_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="FERRY_POLL_INTERVAL_S='soon'"):
        Settings.from_env({"FERRY_POLL_INTERVAL_S": "soon"})


def test_the_device_broker_url_is_not_a_setting_of_its_own() -> None:
    """FERRY_MQTT_URL means the external broker (MQTT settings), never a second fleet value."""
    assert "mqtt_url" not in {f for f in FleetSettings.__dataclass_fields__}
    assert Settings.from_env({"FERRY_MQTT_URL": "mqtt://elsewhere:1883"}).fleet == FleetSettings()


def test_the_mqtt_section_is_read_by_the_same_parser_with_its_prefix() -> None:
    settings = Settings.from_env(
        {
            "FERRY_MQTT_URL": "mqtt://broker:1883",
            "FERRY_PORT": "9000",
            "FERRY_MQTT_PORT": "2000",
            "FERRY_MQTT_INGEST_BATCH": "50",
        }
    )
    assert (settings.port, settings.mqtt.port, settings.mqtt.ingest_batch) == (9000, 2000, 50)
    assert settings.mqtt.enabled, "an external broker's URL implies MQTT on"
    with pytest.raises(SettingsError, match="FERRY_MQTT_PORT='x'"):
        Settings.from_env({"FERRY_MQTT_PORT": "x"})
    with pytest.raises(SettingsError, match="mqtt://host:port"):
        Settings.from_env({"FERRY_MQTT_URL": "http://broker"})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FERRY_BLOB_BACKEND": "gcs"}, "FERRY_BLOB_BACKEND"),
        ({"FERRY_BLOB_BACKEND": "s3"}, "FERRY_BLOB_S3_BUCKET"),
        (
            {
                "FERRY_BLOB_BACKEND": "s3",
                "FERRY_BLOB_S3_BUCKET": "b",
                "FERRY_BLOB_S3_ENDPOINT_URL": "s3.local",
            },
            "FERRY_BLOB_S3_ENDPOINT_URL",
        ),
        ({"FERRY_BLOB_PRESIGN_EXPIRY_S": "0"}, "FERRY_BLOB_PRESIGN_EXPIRY_S"),
        ({"FERRY_BLOB_S3_PART_MB": "1"}, "FERRY_BLOB_S3_PART_MB"),
        ({"FERRY_BLOB_ACCEL_REDIRECT": "_ferry_blobs"}, "FERRY_BLOB_ACCEL_REDIRECT"),
        (
            {"FERRY_BLOB_REDIRECT": "maybe", "FERRY_BLOB_PRESIGN_EXPIRY_S": "soon"},
            "FERRY_BLOB_PRESIGN_EXPIRY_S",
        ),
    ],
)
def test_bad_blob_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_blob_settings_are_read_from_their_section() -> None:
    settings = Settings.from_env(
        {
            "FERRY_BLOB_BACKEND": "s3",
            "FERRY_BLOB_S3_BUCKET": "models",
            "FERRY_BLOB_S3_ENDPOINT_URL": "http://minio:9000",
            "FERRY_BLOB_PRESIGN_EXPIRY_S": "60",
            "FERRY_BLOB_REDIRECT": "false",
        }
    )
    blobs = settings.blobs
    assert (blobs.backend, blobs.s3_bucket, blobs.s3_endpoint_url) == (
        "s3",
        "models",
        "http://minio:9000",
    )
    assert blobs.presign_expiry_s == 60 and blobs.redirect is False
    assert Settings.from_env({}).blobs.backend == "local"


def test_the_s3_backend_without_boto3_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    with pytest.raises(SettingsError, match=r"ferry-server\[s3\]"):
        Settings.from_env({"FERRY_BLOB_BACKEND": "s3", "FERRY_BLOB_S3_BUCKET": "models"})
