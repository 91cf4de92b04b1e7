"""Start and stop the two stacks under test, each on its own ports and in its own folder.

`RayStack` is the real service, started by `feedbackbot.service.Service` exactly as the
integration tests start it. `BaselineStack` is `bench.baseline_app` under uvicorn behind a
second Nginx gateway rendered by gateway/start.sh from the same template, with its own mail
sink. Both write only under their data folder and stop every process by its id.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

from bench.processes import process_tree
from feedbackbot.errors import ServiceError
from feedbackbot.keys import KeyStore
from feedbackbot.service import Ports, Service, ServiceConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAIL_FROM = "feedback@feedbackbot.localhost"
ADMIN_ADDRESS = "admin@feedbackbot.localhost"
# High enough that the gateway's per-key rate limit never rejects a benchmark request.
UNLIMITED_RATE_RPS = 100_000
UNLIMITED_BURST = 100_000
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BaselinePorts:
    """Ports of the baseline stack on 127.0.0.1, away from the service's and the tests' ports.

    They lie below Linux's default ephemeral range (32768-60999), so no outgoing
    connection can hold one of them as its source port when uvicorn or Nginx binds it.
    """

    gateway: int = 29180
    app: int = 29100
    mail: int = 29525


def serve_settings(serve_config: Path = PROJECT_ROOT / "serve_config.yaml") -> dict[str, Any]:
    """Return the application args and each deployment's user_config from serve_config.yaml."""
    with serve_config.open(encoding="utf-8") as source:
        document = yaml.safe_load(source)

    application = document["applications"][0]
    user_configs = {
        deployment["name"]: deployment.get("user_config", {}) for deployment in application.get("deployments", [])
    }
    return {"args": application.get("args", {}), "user_configs": user_configs}


def mail_urls(mail_port: int) -> tuple[str, list[str]]:
    """Return the customer URL and the admin URLs that send to the mail sink on this port."""
    sink = f"mailto://127.0.0.1:{mail_port}?from={MAIL_FROM}"
    return sink, [f"{sink}&to={ADMIN_ADDRESS}"]


def write_keys(data_dir: Path) -> str:
    """Create a key store with a submit and an admin key, and the demo file that Service expects. Return the submit key.

    The folder is made readable for everyone, because `tempfile.mkdtemp` makes it private
    to its owner, and the gateway's workers run as the user `nobody` and need their temp
    folders inside it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    store = KeyStore(data_dir / "api-keys.json")
    _, submit = store.create("submit", label="benchmark")
    _, admin = store.create("admin", label="benchmark")
    (data_dir / "demo-keys.env").write_text(f"FEEDBACKBOT_SUBMIT_KEY={submit}\nFEEDBACKBOT_ADMIN_KEY={admin}\n")
    return submit


class RayStack:
    """The service under test: Ray, the Serve graph, the Nginx gateway and a mail sink."""

    def __init__(
        self,
        data_dir: Path,
        ports: Ports,
        progress: Callable[[str], None],
        *,
        fast_ingress: bool = False,
        app_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.api_key = write_keys(data_dir)
        customer_url, admin_urls = mail_urls(ports.mail)
        app_args: dict[str, Any] = {"customer_notify_url": customer_url, "admin_notify_urls": admin_urls}
        if "snapshot_dir" in serve_settings()["args"]:
            # The default is a folder of the project, but the benchmark keeps its files in its own folder.
            app_args["snapshot_dir"] = str(data_dir / "snapshots")
        app_args.update(app_overrides or {})
        self.config = ServiceConfig(
            data_dir=data_dir,
            ports=ports,
            app_args=app_args,
            rate_per_key_rps=UNLIMITED_RATE_RPS,
            rate_burst=UNLIMITED_BURST,
            fast_ingress=fast_ingress,
        )
        self.service = Service(self.config, progress=progress)
        self._progress = progress
        self._known_pids: list[int] = []

    @property
    def url(self) -> str:
        return self.config.gateway_url

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.serve}"

    def start(self) -> None:
        """Start the service. After a failed start, stop what started and try once more.

        The prescribed ports 36379, 38000, 38080 and 38265 lie in Linux's ephemeral port
        range, so an outgoing connection of another program can briefly hold one of them.
        """
        try:
            self.service.start()
        except ServiceError as error:
            self._progress(f"The service failed to start ({error}); stopping it and trying once more in 5 s")
            self.remember_processes()
            self.service.stop()
            time.sleep(5.0)
            self.service.start()
        self.remember_processes()

    def submit_in_flight_limit(self) -> int | None:
        """Return the gateway's limit of single submissions in flight, or None when it has none.

        It reads the file that gateway/start.sh rendered, so it reports the limit in force.
        """
        rendered = (self.config.gateway_dir / "limit-in-flight-submit.conf").read_text(encoding="utf-8").split()
        return int(rendered[-1].rstrip(";")) if rendered else None

    def save_logs(self, folder: Path) -> None:
        """Copy the launcher's logs and Nginx's error log to `folder`, before the data folder goes."""
        _copy_files([*self.config.run_dir.glob("*.log"), self.config.gateway_dir / "error.log"], folder)

    def roots(self) -> list[int]:
        """Return the root process ids: `ray start`, the Nginx master and the mail sink."""
        return list(self.service.running_parts().values())

    def remember_processes(self) -> None:
        """Record the current process ids, so that `stop` can check that all of them exited."""
        current = {process.pid for process in process_tree(self.roots())}
        self._known_pids = sorted(set(self._known_pids) | current)

    def stop(self) -> list[int]:
        """Stop everything and return the ids of processes that are still alive afterwards."""
        self.remember_processes()
        self.service.stop()
        return _alive(self._known_pids)


class BaselineStack:
    """The baseline app under uvicorn, its Nginx gateway and its mail sink."""

    def __init__(self, data_dir: Path, ports: BaselinePorts, settings: dict[str, Any], progress: Callable[[str], None]) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.api_key = write_keys(data_dir)
        self._settings = settings
        self._progress = progress
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._gateway_pid: int | None = None
        self._known_pids: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def gateway_dir(self) -> Path:
        return self.data_dir / "gateway"

    def start(self) -> None:
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)

        self._spawn(
            "mail sink",
            [sys.executable, "-m", "feedbackbot.mailsink", "--port", str(self.ports.mail), "--folder", str(self.data_dir / "mail")],
            log_dir / "mailsink.log",
        )
        self._spawn("baseline app", self._app_command(), log_dir / "baseline_app.log")
        _wait_for_health(f"http://127.0.0.1:{self.ports.app}/healthz", 180.0, log_dir / "baseline_app.log", self._processes["baseline app"])

        result = subprocess.run(
            [str(PROJECT_ROOT / "gateway" / "start.sh"), "start"],
            env=self._gateway_env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"gateway/start.sh start failed for the baseline gateway: {result.stderr.strip()}")
        self._gateway_pid = int(result.stdout.strip().split()[-1])
        _wait_for_health(self.url + "/healthz", 30.0, self.gateway_dir / "error.log", None)
        self._known_pids = [process.pid for process in process_tree(self.roots())]
        self._progress(f"Started the baseline app on 127.0.0.1:{self.ports.app} behind its gateway {self.url}")

    def save_logs(self, folder: Path) -> None:
        """Copy the app's and the mail sink's logs and Nginx's error log to `folder`."""
        _copy_files([*(self.data_dir / "logs").glob("*.log"), self.gateway_dir / "error.log"], folder)

    def roots(self) -> list[int]:
        pids = [process.pid for process in self._processes.values() if process.poll() is None]
        if self._gateway_pid is not None:
            pids.append(self._gateway_pid)
        return pids

    def stop(self) -> list[int]:
        """Stop the gateway, the app and the mail sink, and return the ids of processes still alive."""
        self._known_pids = sorted(set(self._known_pids) | {process.pid for process in process_tree(self.roots())})

        if self._gateway_pid is not None:
            result = subprocess.run(
                [str(PROJECT_ROOT / "gateway" / "start.sh"), "stop"], env=self._gateway_env(), capture_output=True, text=True
            )
            if result.returncode != 0:
                self._progress(f"gateway/start.sh stop failed, stopping the master by its id: {result.stderr.strip()}")
                _terminate(self._gateway_pid)

        for name in ("baseline app", "mail sink"):
            process = self._processes.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._progress(f"The {name} (pid {process.pid}) did not exit within {STOP_TIMEOUT_S:.0f} s; killing it")
                    process.kill()
                    process.wait()
        self._progress("Stopped the baseline stack")
        return _alive(self._known_pids)

    def _app_command(self) -> list[str]:
        args = self._settings["args"]
        enrichment = self._settings["user_configs"].get("Enrichment", {})
        persistence = self._settings["user_configs"].get("Persistence", {})
        customer_url, admin_urls = mail_urls(self.ports.mail)
        command = [
            sys.executable, "-m", "bench.baseline_app",
            "--port", str(self.ports.app),
            "--db", str(self.data_dir / "feedback.duckdb"),
            "--customer-url", customer_url,
            "--torch-threads", str(args.get("torch_threads", 1)),
            "--sentiment-batch-size", str(enrichment.get("max_batch_size", 16)),
            "--model-batch-size", str(enrichment.get("model_batch_size", 8)),
            "--model-workers", str(enrichment.get("model_workers", 1)),
            "--notify-cpu-priority", str(args.get("notify_cpu_priority", "normal")),
            "--sentiment-batch-wait-s", str(enrichment.get("batch_wait_timeout_s", 0.01)),
            "--commit-batch-size", str(persistence.get("max_batch_size", 32)),
            "--commit-batch-wait-s", str(persistence.get("batch_wait_timeout_s", 0.005)),
            "--neutral-low", str(enrichment.get("neutral_low", 0.35)),
            "--neutral-high", str(enrichment.get("neutral_high", 0.65)),
            "--admin-alert-max-rating", str(args.get("admin_alert_max_rating", 2)),
        ]  # fmt: skip
        for url in admin_urls:
            command += ["--admin-url", url]
        return command

    def _gateway_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FEEDBACKBOT_GATEWAY_DIR=str(self.gateway_dir),
            FEEDBACKBOT_KEYS_FILE=str(self.data_dir / "api-keys.json"),
            FEEDBACKBOT_GATEWAY_LISTEN=f"127.0.0.1:{self.ports.gateway}",
            FEEDBACKBOT_UPSTREAM=f"127.0.0.1:{self.ports.app}",
            FEEDBACKBOT_RATE_PER_KEY_RPS=str(UNLIMITED_RATE_RPS),
            FEEDBACKBOT_RATE_BURST=str(UNLIMITED_BURST),
        )
        return env

    def _spawn(self, name: str, command: list[str], log_path: Path) -> None:
        log = open(log_path, "ab")
        self._processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, start_new_session=True
        )


def _wait_for_health(url: str, timeout_s: float, log_path: Path, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no response yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"The process behind {url} exited with status {process.returncode}; see {log_path}.")
        try:
            response = httpx.get(url, timeout=5.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not respond with 200 within {timeout_s:.0f} s (last: {last}); see {log_path}.")


def _copy_files(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.is_file():
            shutil.copy2(path, folder / path.name)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # It has exited already.


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive
