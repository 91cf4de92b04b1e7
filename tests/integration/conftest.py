"""One real feedbackbot stack for the integration tests: Ray, the Serve graph, Nginx and a
mail sink, all on 127.0.0.1 with ports of their own, started by the same code as `make run`.

Tests that read the DuckDB file directly are marked `after_shutdown`. They run last,
after the fixture stops the Serve application, because DuckDB lets no other process open
a file while the persistence replica writes it.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterator

import duckdb
import httpx
import pytest

from feedbackbot.keys import KeyStore
from feedbackbot.service import Ports, Service, ServiceConfig, _is_alive, _process_tree

# Outside Ray's worker port range (10002-19999) and away from `make run`'s defaults.
TEST_PORTS = Ports(
    gateway=28080,
    serve=28000,
    ray_gcs=26379,
    dashboard=28265,
    ray_client=20001,
    dashboard_agent=52366,
    mail=22525,
    metrics_export=28090,
    haproxy_stats=28404,
    haproxy_metrics=29101,
    direct_http_first=23000,
    direct_grpc_first=24000,
)
MAIL_FROM = "feedback@feedbackbot.localhost"
# Port 9 (discard) has no listener on 127.0.0.1, so every send to it fails at once.
DEAD_TARGET_URL = "mailto://127.0.0.1:9?from=feedback@feedbackbot.localhost&to=nobody@feedbackbot.localhost"
ADMIN_ADDRESS = "admin@feedbackbot.localhost"
RATE_PER_KEY_RPS = 50
RATE_BURST = 100
# Only the analyst role has a limit per client address, low enough for a test to reach it.
# Tests that use analyst keys from 127.0.0.1 send only a few requests.
ANALYST_RATE_PER_ADDRESS_RPS = 2
ANALYST_RATE_PER_ADDRESS_BURST = 10
CORS_ORIGIN = "https://forms.feedbackbot.localhost"


@dataclass
class Keys:
    submit: str
    admin: str
    analyst: str
    analyst_other: str = field(repr=False)
    rate_limited: str = field(repr=False)
    chaos: str = field(repr=False)


@dataclass
class Stack:
    """Handles that tests need: URLs, keys, the mail folder and the database path."""

    service: Service
    keys: Keys
    url: str
    serve_url: str
    mail_dir: Path
    db_path: Path
    snapshot_dir: Path
    graph_stopped: bool = False
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected_markers: list[str] = field(default_factory=list)
    mailed_once: set[str] = field(default_factory=set)
    chaos_ids: set[str] = field(default_factory=set)
    # Feedback deleted through POST /v1/admin/privacy/erase: absent from the database, but
    # its confirmation may have been mailed before the erasure.
    erased_ids: set[str] = field(default_factory=set)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kwargs)

    def wait_for_mail(self, predicate, timeout_s: float = 60.0) -> list[EmailMessage]:
        """Return the sink's messages once `predicate(messages)` is true; fail at the deadline."""
        deadline = time.monotonic() + timeout_s
        messages: list[EmailMessage] = []
        while time.monotonic() < deadline:
            messages = read_mail(self.mail_dir)
            if predicate(messages):
                return messages
            time.sleep(0.2)
        pytest.fail(f"The expected mail did not arrive within {timeout_s} s; the sink holds {len(messages)} messages.")

    def log_lines(self, deployment: str) -> list[str]:
        """Return every Serve log line that the replicas of `deployment` wrote so far."""
        folder = self.service.config.ray_temp_dir / "session_latest" / "logs" / "serve"
        lines = []
        for path in folder.glob(f"replica_feedbackbot_{deployment}_*.log"):
            lines.extend(path.read_text(encoding="utf-8", errors="replace").splitlines())
        return lines

    def wait_for_log(self, deployment: str, fragment: str, timeout_s: float = 60.0) -> str:
        """Return the first Serve log line of `deployment` that contains `fragment`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_lines(deployment):
                if fragment in line:
                    return line
            time.sleep(0.2)
        pytest.fail(f"No {deployment} log line containing {fragment!r} within {timeout_s} s.")

    def stop_graph(self) -> None:
        """Shut down the Serve application so that DuckDB's file lock is released."""
        if self.graph_stopped:
            return
        self.service.shutdown_application()
        self.graph_stopped = True

    def connect_db(self) -> duckdb.DuckDBPyConnection:
        self.stop_graph()
        return duckdb.connect(str(self.db_path), read_only=True)


def mail_text(message: EmailMessage) -> str:
    """Return the plain-text body with LF line ends; SMTP carries CRLF."""
    return message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


def count_notifications(mails, ids: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Count confirmations and admin alerts per feedback id, for the ids given."""
    confirmations: dict[str, int] = {}
    alerts: dict[str, int] = {}
    for mail in mails:
        if mail["Subject"] == "We received your feedback":
            feedback_id = mail_text(mail).split("under the reference ", 1)[1].split(".", 1)[0]
            if feedback_id in ids:
                confirmations[feedback_id] = confirmations.get(feedback_id, 0) + 1
        elif mail["To"] == ADMIN_ADDRESS:
            feedback_id = mail["Subject"].rsplit(": ", 1)[-1]
            if feedback_id in ids:
                alerts[feedback_id] = alerts.get(feedback_id, 0) + 1
    return confirmations, alerts


def read_mail(folder: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted(folder.glob("*.eml")):
        messages.append(email.message_from_bytes(path.read_bytes(), policy=email.policy.default))
    return messages


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The chaos runs leave thousands of retries to the dead target behind, which delay the
    # mail of any later test, so they run after the other tests and before the final checks.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("after_shutdown") is not None,
            item.get_closest_marker("chaos") is not None,
        )
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "after_shutdown: runs last, after the Serve application is shut down")
    config.addinivalue_line("markers", "chaos: runs after the other integration tests, before the after_shutdown ones")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Not under pytest's tmp_path: pytest deletes old base folders when another pytest run
    # starts, which would take the mail folder and pid files from under a running stack.
    data_dir = Path(tempfile.mkdtemp(prefix="feedbackbot-integration-"))
    # mkdtemp makes the folder private to root, but the gateway's workers run as the user
    # `nobody` and must reach their temp folders inside it to buffer large bodies.
    data_dir.chmod(0o755)
    store = KeyStore(data_dir / "api-keys.json")
    keys = Keys(
        submit=store.create("submit", "tests")[1],
        admin=store.create("admin", "tests")[1],
        analyst=store.create("analyst", "tests")[1],
        analyst_other=store.create("analyst", "tests: second analyst")[1],
        rate_limited=store.create("submit", "tests: rate limit")[1],
        chaos=store.create("submit", "tests: chaos")[1],
    )
    (data_dir / "demo-keys.env").write_text(
        f"FEEDBACKBOT_SUBMIT_KEY={keys.submit}\nFEEDBACKBOT_ANALYST_KEY={keys.analyst}\n"
        f"FEEDBACKBOT_ADMIN_KEY={keys.admin}\n"
    )

    sink = f"mailto://127.0.0.1:{TEST_PORTS.mail}?from={MAIL_FROM}"
    config = ServiceConfig(
        data_dir=data_dir,
        ports=TEST_PORTS,
        app_args={
            "customer_notify_url": sink,
            # The second admin target has no server behind it, so its entries end up dead.
            "admin_notify_urls": [f"{sink}&to={ADMIN_ADDRESS}", DEAD_TARGET_URL],
            # Tries span at least 6 s (full jitter halves each wait at most), longer than
            # the mail outage of the chaos test, while dead-target entries die within 13 s.
            "notify_max_attempts": 8,
            "notify_backoff_base_s": 0.25,
            "notify_backoff_max_s": 3.0,
            # High enough that the dead target never opens its circuit here; the
            # breaker itself is covered by unit tests.
            "notify_circuit_failures": 100000,
            "notify_circuit_open_s": 1.0,
            # Entries leased by a killed notification replica are sent again after this.
            "notify_lease_s": 15.0,
            # Rows stored without sentiment during the enrichment drill are scored soon after.
            "enrichment_retry_interval_s": 1.0,
            "enrichment_max_attempts": 1000,
            "snapshot_dir": str(data_dir / "snapshots"),
        },
        rate_per_key_rps=RATE_PER_KEY_RPS,
        rate_burst=RATE_BURST,
        gateway_environment={
            "FEEDBACKBOT_RATE_PER_ADDRESS_RPS_ANALYST": str(ANALYST_RATE_PER_ADDRESS_RPS),
            "FEEDBACKBOT_RATE_PER_ADDRESS_BURST_ANALYST": str(ANALYST_RATE_PER_ADDRESS_BURST),
            "FEEDBACKBOT_CORS_ORIGIN": CORS_ORIGIN,
            # Tests here send hundreds of requests at once (rate limits, chaos), which the
            # in-flight limits would turn into 503s; test_gateway_in_flight.py covers them.
            "FEEDBACKBOT_SUBMIT_MAX_IN_FLIGHT": "0",
            "FEEDBACKBOT_BATCH_MAX_IN_FLIGHT": "0",
        },
        fast_ingress=os.environ.get("FEEDBACKBOT_FAST_INGRESS", "0") == "1",
    )
    service = Service(config)
    ray_tree: list[int] = []
    parts: dict[str, int] = {}
    try:
        service.start()
        ray_tree = _process_tree(service.running_parts()["ray"])
        yield Stack(
            service=service,
            keys=keys,
            url=config.gateway_url,
            serve_url=f"http://127.0.0.1:{TEST_PORTS.serve}",
            mail_dir=config.mail_dir,
            db_path=config.db_path,
            snapshot_dir=data_dir / "snapshots",
        )
    finally:
        parts = service.running_parts()
        service.stop()

    leftovers = [pid for pid in [*parts.values(), *ray_tree] if _is_alive(pid)]
    assert leftovers == [], f"processes still running after stop: {leftovers}"
    shutil.rmtree(data_dir)
