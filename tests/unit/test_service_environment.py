"""The environment that feedbackbot.service gives Ray, with and without fast ingress."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from feedbackbot.service import Ports, Service, ServiceConfig


@pytest.fixture(autouse=True)
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fast ingress creates HAProxy's folder under the temporary directory; keep it in tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def environment(tmp_path: Path, *, fast_ingress: bool, ports: Ports | None = None) -> dict[str, str]:
    config = ServiceConfig(data_dir=tmp_path, ports=ports or Ports(), fast_ingress=fast_ingress)
    return Service(config, progress=lambda message: None).ray_environment()


def test_default_ingress_without_haproxy(tmp_path: Path) -> None:
    env = environment(tmp_path, fast_ingress=False)

    assert env["RAY_AUTH_MODE"] == "token"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env


def test_fast_ingress_unbuffered_logs(tmp_path: Path) -> None:
    # Throughput-optimised mode would otherwise hold up to 1000 records per replica in memory.
    env = environment(tmp_path, fast_ingress=True)

    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1"


def test_fast_ingress_ports_per_instance(tmp_path: Path) -> None:
    ports = Ports(ray_gcs=26379, haproxy_stats=28404, haproxy_metrics=29101, direct_http_first=23000, direct_grpc_first=24000)

    env = environment(tmp_path, fast_ingress=True, ports=ports)

    assert Path(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent == tmp_path / "fbh-26379"
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("28404", "29101")
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("23000", "23099")
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"]) == ("24000", "24099")
