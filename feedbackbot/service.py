"""Start and stop the local feedbackbot service: mail sink, Ray with Serve, Nginx gateway.

    python -m feedbackbot.service start|stop|status

`make run` and `make stop` call this module, and the integration tests use `Service` with
their own folder and ports, so both run the same code. Every process is recorded by its
process id under `<data>/run/` and stopped by that id; nothing else on the machine is touched.
Ray runs with token authentication: the token lives in `<data>/run/ray-auth-token`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import httpx
import yaml

from feedbackbot.errors import KeyStoreError, ServiceError
from feedbackbot.keys import LEGACY_KEYS_FILE_NAME, KeyStore, new_api_key  # noqa: F401 (new_api_key is re-exported)
from feedbackbot.keys import is_alive as _is_alive

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024
GRAPH_READY_TIMEOUT_S = 300.0
RAY_STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Ports:
    """TCP ports on 127.0.0.1. Ray's worker ports are 10002-19999, so avoid that range."""

    gateway: int = 8080
    serve: int = 8000
    ray_gcs: int = 6379
    dashboard: int = 8265
    ray_client: int = 10001
    dashboard_agent: int = 52365
    mail: int = 2525
    # Ray's Prometheus endpoint with Serve's and the application's metrics (docs/operations.md).
    metrics_export: int = 8090
    # Used only with fast_ingress: HAProxy's stats and metrics ports, and the first of 100
    # HTTP and 100 gRPC ports for the replicas that HAProxy sends requests to.
    haproxy_stats: int = 8404
    haproxy_metrics: int = 9101
    direct_http_first: int = 30000
    direct_grpc_first: int = 40000


@dataclass(frozen=True)
class ServiceConfig:
    """Data folder, ports and gateway limits of one service instance."""

    data_dir: Path = PROJECT_ROOT / "data"
    ports: Ports = field(default_factory=Ports)
    serve_config: Path = PROJECT_ROOT / "serve_config.yaml"
    app_args: dict[str, Any] = field(default_factory=dict)
    rate_per_key_rps: int = 20
    rate_burst: int = 40
    num_cpus: int | None = None
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES
    # Ray Serve's HAProxy ingress and throughput-optimised mode (RAY_SERVE_ENABLE_HA_PROXY,
    # RAY_SERVE_THROUGHPUT_OPTIMIZED) instead of the Python HTTP proxy.
    fast_ingress: bool = False
    # Extra environment for gateway/start.sh, for settings without a field here: per-role and
    # per-address rate limits, FEEDBACKBOT_CORS_ORIGIN (see the header of gateway/start.sh).
    gateway_environment: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "api-keys.json"

    @property
    def demo_keys_file(self) -> Path:
        return self.data_dir / "demo-keys.env"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "feedback.duckdb"

    @property
    def token_file(self) -> Path:
        return self.run_dir / "ray-auth-token"

    @property
    def gateway_dir(self) -> Path:
        return self.data_dir / "gateway"

    @property
    def ray_temp_dir(self) -> Path:
        # Ray's socket paths must stay under about 100 characters, so the temp folder is
        # short and under /tmp rather than under the data folder.
        return Path("/tmp") / f"feedbackbot-ray-{self.ports.ray_gcs}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.dashboard}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics_export}/metrics"


# Variable names of the demo keys in data/demo-keys.env, by role.
DEMO_KEY_VARIABLES = {
    "submit": "FEEDBACKBOT_SUBMIT_KEY",
    "analyst": "FEEDBACKBOT_ANALYST_KEY",
    "admin": "FEEDBACKBOT_ADMIN_KEY",
}


@dataclass(frozen=True)
class DemoKeys:
    submit: str
    admin: str
    # Empty when demo-keys.env was written by a version without the analyst role.
    analyst: str = ""


class Service:
    """The processes of one local feedbackbot instance."""

    def __init__(self, config: ServiceConfig, progress: Callable[[str], None] = print) -> None:
        self.config = config
        self._progress = progress
        self._started_at = time.monotonic()

    # -- public operations ------------------------------------------------------------

    def start(self) -> DemoKeys:
        """Start every process that is not running yet and wait until the graph responds."""
        self._started_at = time.monotonic()
        self.config.run_dir.mkdir(parents=True, exist_ok=True)

        keys = self._ensure_keys()
        self._ensure_token()
        self._start_mail_sink()
        self._start_ray()
        self.deploy()
        self._start_gateway()
        self._wait_for_gateway()
        return keys

    def stop(self) -> None:
        """Stop the gateway, the graph, Ray and the mail sink, each by its process id."""
        self._started_at = time.monotonic()
        self._stop_gateway()
        self._stop_ray()
        self._stop_pid_file(self._pid_file("mailsink"), "mail sink")

    def running_parts(self) -> dict[str, int]:
        """Return the process id of each part that is running now."""
        parts = {
            "ray": self._pid_from(self._pid_file("ray")),
            "mail sink": self._pid_from(self._pid_file("mailsink")),
            "gateway": self._pid_from(self.config.gateway_dir / "nginx.pid"),
        }
        return {name: pid for name, pid in parts.items() if pid is not None}

    def read_demo_keys(self) -> DemoKeys:
        values = _read_env_file(self.config.demo_keys_file)
        return DemoKeys(
            submit=values["FEEDBACKBOT_SUBMIT_KEY"],
            admin=values["FEEDBACKBOT_ADMIN_KEY"],
            analyst=values.get("FEEDBACKBOT_ANALYST_KEY", ""),
        )

    def ray_environment(self) -> dict[str, str]:
        """Return the environment for Ray processes and Ray CLI calls of this instance."""
        env = dict(os.environ)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.config.token_file),
            FEEDBACKBOT_HOME=str(PROJECT_ROOT),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.pop("RAY_AUTH_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        if self.config.fast_ingress:
            env.update(self._fast_ingress_environment())
        return env

    def _fast_ingress_environment(self) -> dict[str, str]:
        """Return the variables that turn on HAProxy ingress, with files and ports of this instance.

        Ray's defaults put HAProxy's files in /tmp/haproxy-serve and its ports at fixed
        numbers, so two instances on one machine would share them.
        """
        ports = self.config.ports
        # Ray adds a 56-character node id folder, and HAProxy takes socket paths of at most
        # 97 characters, so the folder name stays short: one per instance, by its GCS port.
        folder = Path(tempfile.gettempdir()) / f"fbh-{ports.ray_gcs}"
        folder.mkdir(parents=True, exist_ok=True)
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(ports.haproxy_stats),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports.haproxy_metrics),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(ports.direct_http_first),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(ports.direct_http_first + 99),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(ports.direct_grpc_first),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(ports.direct_grpc_first + 99),
            # Throughput-optimised mode buffers up to 1000 log records per replica and writes them
            # only when the buffer fills or on an error. Write each record at once instead.
            "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        }

    # -- steps of start ---------------------------------------------------------------

    def _say(self, message: str) -> None:
        elapsed = time.monotonic() - self._started_at
        self._progress(f"[{elapsed:6.1f} s] {message}")

    def _ensure_keys(self) -> DemoKeys:
        """Create each missing demo key in the key store and write all of them to demo-keys.env.

        A plain api-keys.txt of older versions is imported into the store first, which
        stores only the hashes of its keys and deletes the file.
        """
        store = KeyStore(self.config.keys_file)
        legacy_file = self.config.data_dir / LEGACY_KEYS_FILE_NAME
        created = []
        try:
            if legacy_file.exists():
                imported = store.import_plain(legacy_file)
                self._say(f"Imported {len(imported)} API keys from {legacy_file} into {store.path} as hashes, and deleted {legacy_file}")

            values = {}
            # Demo keys from before the store existed are unknown to the gateway, so they are replaced.
            if store.exists() and self.config.demo_keys_file.exists():
                values = _read_env_file(self.config.demo_keys_file)
            for role, variable in DEMO_KEY_VARIABLES.items():
                if not values.get(variable):
                    _, values[variable] = store.create(role, label="demo key of make run")
                    created.append(role)
        except KeyStoreError as error:
            raise ServiceError(f"Cannot prepare the demo API keys: {error}") from error

        if created:
            _write_private(
                self.config.demo_keys_file,
                "".join(f"{variable}={values[variable]}\n" for variable in DEMO_KEY_VARIABLES.values()),
            )
            self._say(f"Created demo API keys for {', '.join(created)} in {store.path} and {self.config.demo_keys_file}")
        return self.read_demo_keys()

    def _ensure_token(self) -> None:
        if not self.config.token_file.exists():
            _write_private(self.config.token_file, secrets.token_hex(32) + "\n")
            self._say(f"Created the Ray auth token in {self.config.token_file}")

    def _start_mail_sink(self) -> None:
        pid_file = self._pid_file("mailsink")
        if self._pid_from(pid_file):
            self._say("Mail sink is already running")
            return

        _require_free_port(self.config.ports.mail, "mail sink")
        log = open(self.config.run_dir / "mailsink.log", "ab")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedbackbot.mailsink",
                "--port",
                str(self.config.ports.mail),
                "--folder",
                str(self.config.mail_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pid_file.write_text(f"{process.pid}\n")
        _wait_for_port(self.config.ports.mail, 15.0, "mail sink", self.config.run_dir / "mailsink.log", process)
        self._say(f"Started the mail sink on 127.0.0.1:{self.config.ports.mail} (pid {process.pid}), mail in {self.config.mail_dir}")

    def _start_ray(self) -> None:
        pid_file = self._pid_file("ray")
        if self._pid_from(pid_file):
            self._say("Ray is already running")
            return

        ports = self.config.ports
        for port, name in (
            (ports.ray_gcs, "Ray GCS"),
            (ports.dashboard, "Ray dashboard"),
            (ports.serve, "Serve HTTP"),
            (ports.metrics_export, "Ray metrics export"),
        ):
            _require_free_port(port, name)

        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--port", str(ports.ray_gcs),
            "--node-ip-address", "127.0.0.1",
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(ports.dashboard),
            "--ray-client-server-port", str(ports.ray_client),
            "--dashboard-agent-listen-port", str(ports.dashboard_agent),
            "--metrics-export-port", str(ports.metrics_export),
            "--temp-dir", str(self.config.ray_temp_dir),
            "--object-store-memory", str(self.config.object_store_bytes),
            "--disable-usage-stats",
        ]  # fmt: skip
        if self.config.num_cpus is not None:
            command += ["--num-cpus", str(self.config.num_cpus)]

        log_path = self.config.run_dir / "ray.log"
        log = open(log_path, "ab")
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.ray_environment(),
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
        pid_file.write_text(f"{process.pid}\n")
        self._say(f"Starting Ray (pid {process.pid}), log in {log_path}")
        _wait_for_port(ports.dashboard, 90.0, "Ray dashboard", log_path, process)
        self._say(f"Ray is up; dashboard at {self.config.dashboard_url}")

    def deploy(self, user_configs: Mapping[str, Mapping[str, Any]] | None = None, *, wait: bool = True) -> None:
        """Deploy the Serve application from serve_config.yaml, or update the running one.

        `user_configs` maps deployment names to keys merged into their `user_config`; Serve
        applies a changed user_config to running replicas without restarting them. With
        `wait`, returns once /healthz reports every deployment healthy.
        """
        rendered = self._render_serve_config(user_configs or {})
        serve = str(Path(sys.executable).with_name("serve"))
        deadline = time.monotonic() + 60.0
        while True:
            result = subprocess.run(
                [serve, "deploy", str(rendered), "--address", self.config.dashboard_url],
                env=self.ray_environment(),
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
            )
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"serve deploy {rendered} failed: {result.stderr.strip()[-2000:]}\n"
                    f"Check the Ray log {self.config.run_dir / 'ray.log'}."
                )
            # The dashboard accepts connections a little before its Serve API is ready.
            time.sleep(2.0)

        if not wait:
            self._say("Deployed the Serve application")
            return
        self._say("Deployed the Serve application; waiting for every deployment (the model loads first)")
        self._wait_for_graph()

    def _render_serve_config(self, user_configs: Mapping[str, Mapping[str, Any]]) -> Path:
        with open(self.config.serve_config, encoding="utf-8") as source:
            document = yaml.safe_load(source)

        document.setdefault("http_options", {})["port"] = self.config.ports.serve
        for application in document["applications"]:
            args = application.setdefault("args", {})
            args["db_path"] = str(self.config.db_path)
            args.update(self.config.app_args)
            for deployment in application.get("deployments", []):
                if deployment["name"] in user_configs:
                    deployment.setdefault("user_config", {}).update(user_configs[deployment["name"]])

        rendered = self.config.run_dir / "serve_config.yaml"
        rendered.write_text(
            "# Rendered by feedbackbot.service from " + str(self.config.serve_config) + "; do not edit.\n"
            + yaml.safe_dump(document, sort_keys=False)
        )
        return rendered

    def _wait_for_graph(self) -> None:
        url = f"http://127.0.0.1:{self.config.ports.serve}/healthz"
        deadline = time.monotonic() + GRAPH_READY_TIMEOUT_S
        last = "no answer yet"
        next_report = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                response = httpx.get(url, timeout=5.0)
                if response.status_code == 200:
                    self._say("Every deployment reports healthy")
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() >= next_report:
                status, message = self._application_status()
                if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise ServiceError(
                        f"The Serve application is {status}: {message.strip()[-3000:]}\n"
                        f"Replica logs are under {self.config.ray_temp_dir}/session_latest/logs/serve/."
                    )
                self._say(f"Still waiting for the graph: application {status}, /healthz {last}")
                next_report = time.monotonic() + 10.0
            time.sleep(1.0)

        raise ServiceError(
            f"The graph did not become healthy within {GRAPH_READY_TIMEOUT_S:.0f} s; last response from "
            f"{url}: {last}. Run 'RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={self.config.token_file} "
            f"serve status --address {self.config.dashboard_url}' and read the replica logs under "
            f"{self.config.ray_temp_dir}/session_latest/logs/serve/."
        )

    def shutdown_application(self, timeout_s: float = 180.0) -> None:
        """Shut down the Serve application and its controller, and wait until they are gone.

        `serve shutdown` can return while the controller is still draining (it waits 30 s
        at most), and a deploy sent then goes to the dying controller and is lost.
        """
        serve = str(Path(sys.executable).with_name("serve"))
        subprocess.run(
            [serve, "shutdown", "--yes", "--address", self.config.dashboard_url],
            env=self.ray_environment(),
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )

        token = self.config.token_file.read_text().strip()
        url = f"{self.config.dashboard_url}/api/serve/applications/"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
                if response.status_code == 200 and not response.json().get("controller_info"):
                    self._say("Shut down the Serve application")
                    return
            except httpx.HTTPError as error:
                self._say(f"Waiting for the Serve controller to exit: {error}")
            time.sleep(1.0)
        raise ServiceError(
            f"The Serve controller was still running {timeout_s:.0f} s after 'serve shutdown'; "
            f"read its log under {self.config.ray_temp_dir}/session_latest/logs/serve/."
        )

    def _application_status(self) -> tuple[str, str]:
        """Return the Serve application's status and message from `serve status`."""
        serve = str(Path(sys.executable).with_name("serve"))
        result = subprocess.run(
            [serve, "status", "--address", self.config.dashboard_url],
            env=self.ray_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            return "UNKNOWN", result.stderr.strip()[-500:]
        applications = (yaml.safe_load(result.stdout) or {}).get("applications") or {}
        for application in applications.values():
            return application.get("status", "UNKNOWN"), application.get("message", "")
        return "NOT_STARTED", ""

    def _start_gateway(self) -> None:
        if self._pid_from(self.config.gateway_dir / "nginx.pid"):
            self._say("Gateway is already running")
            return
        _require_free_port(self.config.ports.gateway, "gateway")
        pid = self._run_gateway_script("start")
        self._say(f"Started the Nginx gateway on {self.config.gateway_url} (pid {pid})")

    def _wait_for_gateway(self) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.config.gateway_url + "/healthz", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # Nginx is still binding its port; the loop retries until the deadline.
            time.sleep(0.5)
        raise ServiceError(
            f"The gateway at {self.config.gateway_url} did not respond to /healthz within 30 s; "
            f"see {self.config.gateway_dir / 'error.log'}."
        )

    def reload_gateway(self, settings: dict[str, str]) -> None:
        """Apply gateway settings (start.sh environment variables) on top of the configured ones.

        gateway/start.sh renders the configuration again, and Nginx reloads without dropping
        requests. The benchmark uses it to measure the same service under other gateway limits.
        """
        self._run_gateway_script("reload", settings)
        self._say(f"Reloaded the gateway with {settings}")

    def _run_gateway_script(self, action: str, settings: dict[str, str] | None = None) -> str:
        env = dict(os.environ)
        env.update(
            FEEDBACKBOT_GATEWAY_DIR=str(self.config.gateway_dir),
            FEEDBACKBOT_KEYS_FILE=str(self.config.keys_file),
            FEEDBACKBOT_GATEWAY_LISTEN=f"127.0.0.1:{self.config.ports.gateway}",
            FEEDBACKBOT_UPSTREAM=f"127.0.0.1:{self.config.ports.serve}",
            FEEDBACKBOT_RATE_PER_KEY_RPS=str(self.config.rate_per_key_rps),
            FEEDBACKBOT_RATE_BURST=str(self.config.rate_burst),
            FEEDBACKBOT_PYTHON=sys.executable,
        )
        env.update(self.config.gateway_environment)
        env.update(settings or {})
        result = subprocess.run(
            [str(PROJECT_ROOT / "gateway" / "start.sh"), action], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ServiceError(f"gateway/start.sh {action} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    # -- steps of stop ----------------------------------------------------------------

    def _stop_gateway(self) -> None:
        if self._pid_from(self.config.gateway_dir / "nginx.pid") is None:
            return
        self._run_gateway_script("stop")
        self._say("Stopped the gateway")

    def _stop_ray(self) -> None:
        pid_file = self._pid_file("ray")
        pid = self._pid_from(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            return

        # Workers are children of the raylet, which is a child of `ray start --block`, so
        # the process tree contains every process of this Ray instance and no other.
        tree = _process_tree(pid)
        self._say(f"Stopping Serve and Ray (pid {pid}, {len(tree)} processes)")

        serve = str(Path(sys.executable).with_name("serve"))
        result = subprocess.run(
            [serve, "shutdown", "--yes", "--address", self.config.dashboard_url],
            env=self.ray_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            self._say(f"serve shutdown failed, stopping Ray anyway: {result.stderr.strip()[-500:]}")

        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + RAY_STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(_is_alive(member) for member in tree):
            time.sleep(0.5)

        leftovers = [member for member in tree if _is_alive(member)]
        for member in leftovers:
            _kill_quietly(member, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        detail = f", killed {len(leftovers)} that did not exit" if leftovers else ""
        self._say(f"Stopped Ray{detail}")

    def _stop_pid_file(self, pid_file: Path, name: str) -> None:
        pid = self._pid_from(pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and _is_alive(pid):
                time.sleep(0.1)
            if _is_alive(pid):
                _kill_quietly(pid, signal.SIGKILL)
            self._say(f"Stopped the {name}")
        pid_file.unlink(missing_ok=True)

    # -- helpers ----------------------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.pid"

    @staticmethod
    def _pid_from(pid_file: Path) -> int | None:
        """Return the live process id recorded in `pid_file`, or None."""
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_alive(pid) else None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, separator, value = line.partition("=")
        if separator and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _kill_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # It exited between the check and the signal, which is the goal.


def _process_tree(root: int) -> list[int]:
    """Return `root` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))

    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _require_free_port(port: int, name: str) -> None:
    if _port_is_open(port):
        raise ServiceError(
            f"Port {port} for the {name} is already in use by another process. Stop that process, "
            "or stop an older feedbackbot with 'make stop'."
        )


def _wait_for_port(port: int, timeout_s: float, name: str, log_path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_is_open(port):
            return
        if process.poll() is not None:
            raise ServiceError(f"The {name} exited with status {process.returncode}; see {log_path}.")
        time.sleep(0.2)
    raise ServiceError(f"The {name} did not open port {port} within {timeout_s:.0f} s; see {log_path}.")


def print_summary(service: Service, keys: DemoKeys) -> None:
    """Print where everything is and how to use it."""
    config = service.config
    print(
        f"""
feedbackbot is running.

  Gateway:     {config.gateway_url}   (send X-API-Key)
  Submit key:  {keys.submit}
  Analyst key: {keys.analyst or "none yet: run 'make stop' and 'make run' to create one"}
  Admin key:   {keys.admin}
               (also in {config.demo_keys_file}: source it in a shell)
  Database:    {config.db_path}
  Mail sink:   {config.mail_dir}/*.eml
  Dashboard:   {config.dashboard_url}
               Ray uses token authentication: paste the token from
               {config.token_file} into the dashboard's login prompt. For Ray CLI calls, set
               RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={config.token_file}
  Metrics:     {config.metrics_url}   (Prometheus; see docs/operations.md)

Try it:
  . {config.demo_keys_file}
  curl -s -X POST {config.gateway_url}/v1/feedback -H "X-API-Key: $FEEDBACKBOT_SUBMIT_KEY" \\
       -H 'Content-Type: application/json' \\
       -d '{{"customer_name": "Ada", "customer_email": "ada@example.com", "feedback_text": "Fast delivery, thank you!", "rating": 5}}'

Stop everything with 'make stop'; the data stays in {config.data_dir}.
"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedbackbot.service", description=__doc__.splitlines()[0])
    parser.add_argument(
        "action",
        choices=["start", "stop", "status", "deploy"],
        help="deploy applies an edited serve_config.yaml to the running service; Serve changes "
        "a user_config in place and restarts only the deployments whose other settings changed.",
    )
    parser.add_argument("--data-dir", type=Path, default=ServiceConfig().data_dir, help="Folder for data, keys, logs and pid files.")
    args = parser.parse_args(argv)

    fast_ingress = os.environ.get("FEEDBACKBOT_FAST_INGRESS", "0") == "1"
    service = Service(ServiceConfig(data_dir=args.data_dir.resolve(), fast_ingress=fast_ingress))

    if args.action == "status":
        parts = service.running_parts()
        for name, pid in parts.items():
            print(f"{name}: running (pid {pid})")
        if not parts:
            print("feedbackbot is not running.")
        return 0

    if args.action == "deploy":
        if "ray" not in service.running_parts():
            print("error: feedbackbot is not running; start it with 'make run'.", file=sys.stderr)
            return 1
        try:
            service.deploy()
        except ServiceError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0

    if args.action == "stop":
        service.stop()
        print("feedbackbot is stopped; the data stays in", service.config.data_dir)
        return 0

    running = service.running_parts()
    if len(running) == 3:
        print("feedbackbot is already running:", ", ".join(f"{name} (pid {pid})" for name, pid in running.items()))
        print_summary(service, service.read_demo_keys())
        return 0

    try:
        keys = service.start()
    except ServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        print("Stopping what was started.", file=sys.stderr)
        service.stop()
        return 1

    print_summary(service, keys)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
