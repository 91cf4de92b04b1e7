"""Tests for `feedbackbot submit` against a small real HTTP server on 127.0.0.1.

`FakeGateway` is an `http.server` in a thread that follows the POST /v1/feedback
contract minimally: it checks X-API-Key, requires the four fields, rejects a rating
outside 1-5 with 422 and `fields`, and sends X-Request-ID on every response. A few
customer names trigger other responses:

- "Retry Once": 429 with Retry-After: 0 on the first request, then 201
- "Always Busy": 503 with Retry-After: 0 on every request
- "Come Back Tomorrow": 429 with Retry-After: 86400
- "Server Bug": 500 internal_error
- "Drop Connection": the server closes the connection without responding

The data set tests also run the committed files in datasets/ through the service's
real validation (`models.feedback.validate_submission`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from feedbackbot import cli, submit
from models.feedback import validate_submission

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_DIR = REPO_ROOT / "datasets"
API_KEY = "test-submit-key-0123456789"
FIELDS = ("customer_name", "customer_email", "feedback_text", "rating")


# -- fake gateway -----------------------------------------------------------------------------

Validator = Callable[[object], list[dict]]


def minimal_validator(payload: object) -> list[dict]:
    """Return field errors for a missing field or a rating outside 1-5, as the contract shapes them."""
    if not isinstance(payload, dict):
        return [{"field": "body", "message": "The body must be a JSON object."}]
    errors = [{"field": name, "message": f"{name} is required."} for name in FIELDS if name not in payload]
    rating = payload.get("rating")
    if "rating" in payload and (type(rating) is not int or not 1 <= rating <= 5):
        errors.append({"field": "rating", "message": f"Rating must be an integer from 1 to 5; got {json.dumps(rating)}."})
    return errors


def service_validator(payload: object) -> list[dict]:
    """Return the field errors of the service's own validation."""
    return [error.model_dump() for error in validate_submission(payload).errors]


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    api_key: str | None
    body: bytes


class FakeGateway:
    """A threaded HTTP/1.1 server that records every request it receives."""

    def __init__(self, validator: Validator = minimal_validator, api_key: str = API_KEY) -> None:
        self.validator = validator
        self.api_key = api_key
        self.requests: list[ReceivedRequest] = []
        self._requests_by_name: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval makes shutdown() return quickly at teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def requests_named(self, name: str) -> int:
        with self._lock:
            return self._requests_by_name[name]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def respond(self, request: ReceivedRequest) -> tuple[int, dict[str, str], dict] | None:
        """Return the status, extra headers and JSON body for one request, or None to drop the connection."""
        if request.path != "/v1/feedback":
            return 404, {}, _error_body("not_found", f"No route for {request.path}.")
        if request.api_key != self.api_key:
            return 401, {}, _error_body("unauthorized", "Missing or unknown X-API-Key.")

        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = None
        name = payload.get("customer_name") if isinstance(payload, dict) else None
        with self._lock:
            self._requests_by_name[str(name)] += 1
            seen = self._requests_by_name[str(name)]

        if name == "Retry Once" and seen == 1:
            return 429, {"Retry-After": "0"}, _error_body("rate_limited", "Too many requests; retry later.")
        if name == "Always Busy":
            return 503, {"Retry-After": "0"}, _error_body("unavailable", "The service is overloaded.")
        if name == "Come Back Tomorrow":
            return 429, {"Retry-After": "86400"}, _error_body("rate_limited", "Daily quota used up.")
        if name == "Server Bug":
            return 500, {}, _error_body("internal_error", "Something broke; quote the request ID.")
        if name == "Drop Connection":
            return None

        errors = self.validator(payload)
        if errors:
            body = _error_body("validation_failed", "The submission has invalid fields.")
            body["error"]["fields"] = errors
            return 422, {}, body
        created = {
            "id": str(uuid.uuid4()),
            "received_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "sentiment": {"label": "positive", "score": 0.9},
        }
        return 201, {}, created

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ReceivedRequest(self.path, self.headers.get("X-API-Key"), body)
                with gateway._lock:
                    gateway.requests.append(request)

                response = gateway.respond(request)
                if response is None:
                    # http.server closes the socket after this method returns.
                    self.close_connection = True
                    return
                status, headers, payload = response
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Request-ID", f"req-{uuid.uuid4().hex[:12]}")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": f"req-{uuid.uuid4().hex[:12]}"}}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in an empty directory, with no key, URL or proxy from the real environment."""
    for name in ("FEEDBACKBOT_API_KEY", "FEEDBACKBOT_SUBMIT_KEY", "FEEDBACKBOT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    server = FakeGateway()
    server.start()
    yield server
    server.stop()


# -- helpers ----------------------------------------------------------------------------------


def record(name: str = "Ada Byron", rating: object = 5, text: str = "The parcel arrived a day early.") -> dict:
    return {"customer_name": name, "customer_email": "ada@example.com", "feedback_text": text, "rating": rating}


def write_jsonl(path: Path, lines: list[object]) -> Path:
    """Write JSON values one per line. A str is written unchanged, so tests can add broken lines."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def run_submit(gateway_url: str, file: Path, *extra: str) -> int:
    return cli.main(["submit", str(file), "--url", gateway_url, "--api-key", API_KEY, *extra])


def summary_counts(stdout: str) -> dict[str, int]:
    """Parse the counts line of the summary, such as "lines: 4  sent: 4  accepted: 3 ...".

    Returns only the integer counts, so a "time: 0.1 s" entry is left out.
    """
    counts_line = next(line for line in stdout.splitlines() if line.startswith("lines: "))
    counts = {}
    for part in counts_line.split("  "):
        key, _, value = part.partition(": ")
        first_word = value.split(" ")[0]
        if first_word.isdigit():
            counts[key.strip()] = int(first_word)
    return counts


def read_output(path: Path) -> dict[int, dict]:
    return {entry["line"]: entry for entry in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def load_make_csv():
    """Import datasets/make_csv.py, which is a script and not part of a package."""
    if "make_csv" in sys.modules:
        return sys.modules["make_csv"]
    spec = importlib.util.spec_from_file_location("make_csv", DATASET_DIR / "make_csv.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class body runs.
    sys.modules["make_csv"] = module
    spec.loader.exec_module(module)
    return module


# -- JSONL submission -------------------------------------------------------------------------


def test_jsonl_counts_retries_and_output(gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_jsonl(
        tmp_path / "feedback.jsonl",
        [record("Ada Byron"), record("Rating Six", rating=6), record("Retry Once"), record("Grace Hopper")],
    )
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--output", str(output))

    stdout = capsys.readouterr().out
    assert exit_code == 0
    counts = summary_counts(stdout)
    assert counts["lines"] == 4
    assert counts["sent"] == 4
    assert counts["accepted"] == 3
    assert counts["rejected"] == 1
    assert counts["failed"] == 0
    assert counts["retries"] == 1
    assert "1  422 validation_failed [rating]" in stdout
    assert "line 2: 422 validation_failed" in stdout
    assert "rating: Rating must be an integer from 1 to 5; got 6." in stdout

    assert gateway.requests_named("Retry Once") == 2
    assert len(gateway.requests) == 5

    results = read_output(output)
    assert sorted(results) == [1, 2, 3, 4]
    assert results[1]["outcome"] == "accepted"
    assert results[1]["status"] == 201
    assert uuid.UUID(results[1]["id"])
    assert results[1]["request_id"].startswith("req-")
    assert results[2]["outcome"] == "rejected"
    assert results[2]["status"] == 422
    assert results[2]["error"]["code"] == "validation_failed"
    assert results[2]["error"]["fields"][0]["field"] == "rating"
    assert "id" not in results[2]
    assert results[3]["outcome"] == "accepted"
    assert results[3]["attempts"] == 2


def test_jsonl_lines_posted_byte_for_byte(gateway: FakeGateway, tmp_path: Path) -> None:
    # Odd spacing, key order and escapes must reach the server unchanged.
    lines = [
        '{"rating":5,  "customer_name":"Zoë","customer_email":"zoe@example.com","feedback_text":"Sehr gut \\u00fc 👍"}',
        '  {"customer_name": "Ada", "customer_email": "ada@example.org", "feedback_text": "Line one\\nline two", "rating": 4}',
    ]
    source = write_jsonl(tmp_path / "feedback.jsonl", lines)

    exit_code = run_submit(gateway.url, source, "--concurrency", "1")

    assert exit_code == 0
    assert sorted(request.body.decode("utf-8") for request in gateway.requests) == sorted(lines)


def test_jsonl_invalid_line_rejected_locally(
    gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = write_jsonl(
        tmp_path / "feedback.jsonl",
        [record("Ada Byron"), "", '{"customer_name": "Broken", "rating": 5', "NaN", record("Grace Hopper")],
    )
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--output", str(output))

    stdout = capsys.readouterr().out
    assert exit_code == 0
    assert len(gateway.requests) == 2
    counts = summary_counts(stdout)
    assert counts["lines"] == 4
    assert counts["sent"] == 2
    assert counts["accepted"] == 2
    assert counts["rejected"] == 2
    assert "2  local invalid_json" in stdout
    assert "line 3: not sent, not valid JSON" in stdout
    assert "line 4: not sent, not valid JSON" in stdout

    results = read_output(output)
    assert sorted(results) == [1, 3, 4, 5]  # line 2 is blank and skipped
    assert results[3]["outcome"] == "rejected"
    assert results[3]["status"] is None
    assert results[3]["attempts"] == 0
    assert results[3]["error"]["code"] == "invalid_json"


def test_jsonl_invalid_utf8_rejected_locally(gateway: FakeGateway, tmp_path: Path) -> None:
    source = tmp_path / "feedback.jsonl"
    source.write_bytes(json.dumps(record()).encode() + b"\n" + b'{"customer_name": "\xff\xfe"}\n')
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--output", str(output))

    assert exit_code == 0
    assert len(gateway.requests) == 1
    assert read_output(output)[2]["error"]["code"] == "invalid_utf8"


# -- retries and failures ---------------------------------------------------------------------


def test_503_fails_after_max_attempts(gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_jsonl(tmp_path / "feedback.jsonl", [record("Always Busy"), record("Ada Byron")])
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--max-attempts", "3", "--output", str(output))

    stdout = capsys.readouterr().out
    assert exit_code == 1
    assert gateway.requests_named("Always Busy") == 3
    counts = summary_counts(stdout)
    assert counts["accepted"] == 1
    assert counts["failed"] == 1
    assert counts["retries"] == 2
    assert "1  503 unavailable" in stdout
    assert "line 1: 503 unavailable after 3 attempts" in stdout

    failed = read_output(output)[1]
    assert failed["outcome"] == "failed"
    assert failed["status"] == 503
    assert failed["attempts"] == 3


def test_500_not_retried(gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_jsonl(tmp_path / "feedback.jsonl", [record("Server Bug")])

    exit_code = run_submit(gateway.url, source)

    assert exit_code == 1
    assert gateway.requests_named("Server Bug") == 1
    assert summary_counts(capsys.readouterr().out)["failed"] == 1


def test_long_retry_after_fails_without_waiting(gateway: FakeGateway, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "feedback.jsonl", [record("Come Back Tomorrow")])
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--output", str(output))

    assert exit_code == 1
    assert gateway.requests_named("Come Back Tomorrow") == 1
    failed = read_output(output)[1]
    assert failed["status"] == 429
    assert "86400 s" in failed["error"]["message"]


def test_connection_refused_retried_then_stops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Bind and close a socket to get a port on which nothing listens.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    source = write_jsonl(tmp_path / "feedback.jsonl", [record("One"), record("Two"), record("Three")])
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(
        f"http://127.0.0.1:{closed_port}", source, "--max-attempts", "2", "--concurrency", "1", "--output", str(output)
    )

    captured = capsys.readouterr()
    assert exit_code == 1
    assert "cannot connect to" in captured.err
    counts = summary_counts(captured.out)
    assert counts["sent"] == 1
    assert counts["failed"] == 1
    assert counts["not sent"] == 2
    assert counts["retries"] == 1
    results = read_output(output)
    assert results[1]["status"] is None
    assert results[1]["attempts"] == 2
    assert results[1]["error"]["code"] == "connection_error"
    assert results[2]["outcome"] == "not_sent"
    assert results[3]["outcome"] == "not_sent"


def test_dropped_connection_retried_without_stopping_run(
    gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Once the server has responded, a line that cannot connect fails alone and the run goes on."""
    source = write_jsonl(tmp_path / "feedback.jsonl", [record("One"), record("Drop Connection"), record("Three")])
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--concurrency", "1", "--max-attempts", "2", "--output", str(output))

    captured = capsys.readouterr()
    assert exit_code == 1
    assert "cannot connect" not in captured.err
    assert gateway.requests_named("Drop Connection") == 2
    assert gateway.requests_named("Three") == 1
    results = read_output(output)
    assert [results[line]["outcome"] for line in (1, 2, 3)] == ["accepted", "failed", "accepted"]
    assert results[2]["error"]["code"] == "connection_error"


def test_rejected_key_stops_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    server = FakeGateway(api_key="a-different-key-0000")
    server.start()
    try:
        source = write_jsonl(tmp_path / "feedback.jsonl", [record("One"), record("Two"), record("Three")])
        output = tmp_path / "results.jsonl"

        exit_code = run_submit(server.url, source, "--concurrency", "1", "--output", str(output))
    finally:
        server.stop()

    captured = capsys.readouterr()
    assert exit_code == 2
    assert len(server.requests) == 1
    assert "rejected the API key" in captured.err
    assert API_KEY not in captured.err + captured.out
    counts = summary_counts(captured.out)
    assert counts["rejected"] == 1
    assert counts["not sent"] == 2
    assert [entry["outcome"] for entry in read_output(output).values()] == ["rejected", "not_sent", "not_sent"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        ("  12 ", 12.0),
        ("soon", None),
        ("-3", None),
        ("1.5", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert submit.parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 12, 4, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)

    assert submit.parse_retry_after(header, now=now) == 90.0


# -- CSV submission ---------------------------------------------------------------------------


def test_csv_multiline_quoted_text(gateway: FakeGateway, tmp_path: Path) -> None:
    multiline = 'First paragraph, with a comma.\n\nSecond paragraph with "quotes"\tand a tab.'
    source = tmp_path / "feedback.csv"
    source.write_bytes(
        (
            "customer_name,customer_email,feedback_text,rating\r\n"
            f'"O\'Brien, Siobhan",siobhan@example.com,"{multiline.replace(chr(34), chr(34) * 2)}",4\r\n'
            "Grace Hopper,grace@example.org,Plain text on one line.,  5 \r\n"
            "Half Star,half@example.net,Somewhere between four and five.,4.5\r\n"
            "Word Rating,word@example.net,I would give it five stars.,five\r\n"
        ).encode("utf-8")
    )
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--output", str(output))

    assert exit_code == 0
    received = {json.loads(request.body)["customer_email"]: json.loads(request.body) for request in gateway.requests}
    assert received["siobhan@example.com"] == {
        "customer_name": "O'Brien, Siobhan",
        "customer_email": "siobhan@example.com",
        "feedback_text": multiline,
        "rating": 4,
    }
    assert received["grace@example.org"]["rating"] == 5
    assert received["half@example.net"]["rating"] == "4.5"
    assert received["word@example.net"]["rating"] == "five"

    # Line numbers are where each row starts: the first record spans lines 2 to 4.
    results = read_output(output)
    assert sorted(results) == [2, 5, 6, 7]
    assert results[5]["outcome"] == "accepted"
    assert results[6]["outcome"] == "rejected"
    assert results[6]["error"]["fields"][0]["field"] == "rating"


def test_csv_columns_in_any_order_with_bom(gateway: FakeGateway, tmp_path: Path) -> None:
    source = tmp_path / "feedback.csv"
    source.write_bytes(
        "\ufeffrating,feedback_text,customer_email,customer_name\n3,Okay but slow delivery.,ana@example.com,Ana\n".encode(
            "utf-8"
        )
    )

    exit_code = run_submit(gateway.url, source)

    assert exit_code == 0
    assert json.loads(gateway.requests[0].body) == {
        "rating": 3,
        "feedback_text": "Okay but slow delivery.",
        "customer_email": "ana@example.com",
        "customer_name": "Ana",
    }


def test_csv_short_row_rejected_locally(gateway: FakeGateway, tmp_path: Path) -> None:
    source = tmp_path / "feedback.csv"
    source.write_text(
        "customer_name,customer_email,feedback_text,rating\nAna,ana@example.com,Missing the rating\n"
        "Ben,ben@example.com,Everything was fine.,4\n",
        encoding="utf-8",
    )
    output = tmp_path / "results.jsonl"

    exit_code = run_submit(gateway.url, source, "--output", str(output))

    assert exit_code == 0
    assert len(gateway.requests) == 1
    assert read_output(output)[2]["error"]["code"] == "invalid_csv_row"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,email,text,rating\nAna,a@example.com,Fine thanks all good,4\n", "missing columns"),
        ("customer_name,customer_email,feedback_text,rating,order_id\n", "unknown columns 'order_id'"),
        ("", "is empty"),
        ('customer_name,customer_email,feedback_text,rating\n"Ana"x,a@example.com,Fine thanks,4\n', "invalid CSV"),
    ],
)
def test_csv_file_errors_exit_2(
    gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    source = tmp_path / "feedback.csv"
    source.write_text(content, encoding="utf-8")

    exit_code = run_submit(gateway.url, source)

    assert exit_code == 2
    assert message in capsys.readouterr().err
    assert gateway.requests == []


# -- usage errors -----------------------------------------------------------------------------


def test_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exit_code = run_submit("http://127.0.0.1:9", tmp_path / "absent.jsonl")

    assert exit_code == 2
    assert "cannot read" in capsys.readouterr().err


def test_unknown_extension_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "feedback.txt"
    source.write_text(json.dumps(record()) + "\n", encoding="utf-8")

    exit_code = run_submit("http://127.0.0.1:9", source)

    assert exit_code == 2
    assert "--format" in capsys.readouterr().err


def test_format_option_overrides_extension(gateway: FakeGateway, tmp_path: Path) -> None:
    source = tmp_path / "feedback.txt"
    source.write_text(json.dumps(record()) + "\n", encoding="utf-8")

    exit_code = run_submit(gateway.url, source, "--format", "jsonl")

    assert exit_code == 0
    assert len(gateway.requests) == 1


@pytest.mark.parametrize(
    "arguments",
    [
        ["--concurrency", "0"],
        ["--timeout-s", "-1"],
        ["--max-attempts", "zero"],
        ["--format", "xml"],
        ["--url", "ftp://127.0.0.1:8080"],
    ],
)
def test_bad_option_exit_2(tmp_path: Path, arguments: list[str]) -> None:
    source = write_jsonl(tmp_path / "feedback.jsonl", [record()])

    assert cli.main(["submit", str(source), "--api-key", API_KEY, *arguments]) == 2


def test_no_subcommand_exit_2() -> None:
    assert cli.main([]) == 2


def test_help_exit_0(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["submit", "--help"]) == 0
    assert "--max-attempts" in capsys.readouterr().out


def test_empty_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "feedback.jsonl"
    source.write_text("\n\n", encoding="utf-8")

    assert run_submit("http://127.0.0.1:9", source) == 2
    assert "contains no records" in capsys.readouterr().err


# -- API key lookup ---------------------------------------------------------------------------


def write_demo_keys(directory: Path, submit_key: str) -> None:
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "demo-keys.env").write_text(
        f"# written by make run\nFEEDBACKBOT_SUBMIT_KEY={submit_key}\nFEEDBACKBOT_ADMIN_KEY=admin-key-should-not-be-used\n",
        encoding="utf-8",
    )


@pytest.mark.parametrize(
    ("explicit", "environ", "file_key", "expected_value", "expected_source"),
    [
        ("from-option", {"FEEDBACKBOT_API_KEY": "a", "FEEDBACKBOT_SUBMIT_KEY": "s"}, "f", "from-option", "--api-key"),
        (None, {"FEEDBACKBOT_API_KEY": "from-api", "FEEDBACKBOT_SUBMIT_KEY": "s"}, "f", "from-api", "$FEEDBACKBOT_API_KEY"),
        (None, {"FEEDBACKBOT_SUBMIT_KEY": "from-submit"}, "f", "from-submit", "$FEEDBACKBOT_SUBMIT_KEY"),
        (None, {"FEEDBACKBOT_API_KEY": "  ", "FEEDBACKBOT_SUBMIT_KEY": ""}, "from-file", "from-file", "demo-keys.env"),
        (None, {}, "from-file", "from-file", "demo-keys.env"),
    ],
)
def test_api_key_lookup_order(
    tmp_path: Path,
    explicit: str | None,
    environ: dict[str, str],
    file_key: str,
    expected_value: str,
    expected_source: str,
) -> None:
    write_demo_keys(tmp_path, file_key)

    key = cli.resolve_api_key(explicit, environ, tmp_path)

    assert key.value == expected_value
    assert key.source.endswith(expected_source)


def test_api_key_missing_names_all_places(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_jsonl(tmp_path / "feedback.jsonl", [record()])

    exit_code = cli.main(["submit", str(source), "--url", "http://127.0.0.1:9"])

    error = capsys.readouterr().err
    assert exit_code == 2
    for place in ("--api-key", "FEEDBACKBOT_API_KEY", "FEEDBACKBOT_SUBMIT_KEY", "data/demo-keys.env"):
        assert place in error


def test_demo_keys_file_used_and_masked(
    gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_demo_keys(tmp_path, API_KEY)
    source = write_jsonl(tmp_path / "feedback.jsonl", [record()])

    exit_code = cli.main(["submit", str(source), "--url", gateway.url])

    captured = capsys.readouterr()
    assert exit_code == 0
    assert gateway.requests[0].api_key == API_KEY
    assert API_KEY not in captured.out + captured.err
    assert f"{API_KEY[:4]}…" in captured.err


def test_url_from_environment(gateway: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDBACKBOT_URL", gateway.url)
    monkeypatch.setenv("FEEDBACKBOT_API_KEY", API_KEY)
    source = write_jsonl(tmp_path / "feedback.jsonl", [record()])

    assert cli.main(["submit", str(source)]) == 0
    assert len(gateway.requests) == 1


@pytest.mark.parametrize(("secret", "masked"), [("abcdefghijklmnop", "abcd…"), ("short", "…"), ("", "…")])
def test_mask_secret(secret: str, masked: str) -> None:
    assert cli.mask_secret(secret) == masked


# -- committed data set -----------------------------------------------------------------------


def test_dataset_csv_matches_jsonl() -> None:
    """Every valid JSONL line appears in the CSV, in order, with the same values."""
    make_csv = load_make_csv()
    invalid_lines = make_csv.read_invalid_lines()
    jsonl_lines = (DATASET_DIR / "feedback_samples.jsonl").read_text(encoding="utf-8").split("\n")
    assert jsonl_lines[-1] == ""
    jsonl_records = [json.loads(line) for line in jsonl_lines[:-1]]
    expected_rows = [
        [str(item[field]) for field in FIELDS]
        for line_number, item in enumerate(jsonl_records, start=1)
        if line_number not in invalid_lines
    ]

    with (DATASET_DIR / "feedback_samples.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))

    assert rows[0] == list(FIELDS)
    assert len(rows) - 1 == len(expected_rows)
    for index, (row, expected) in enumerate(zip(rows[1:], expected_rows), start=2):
        assert row == expected, f"CSV record {index} differs from its JSONL line"


def test_dataset_size_and_invalid_share() -> None:
    make_csv = load_make_csv()
    invalid_lines = make_csv.read_invalid_lines()
    total = len(make_csv.read_jsonl())

    assert total >= 320
    assert len(invalid_lines) >= 32
    assert len({(entry.fields, entry.reason) for entry in invalid_lines.values()}) == len(invalid_lines)


def test_dataset_csv_up_to_date() -> None:
    """The CSV equals what make_csv.py writes, and the README's invalid list matches the validation."""
    make_csv = load_make_csv()

    expected = make_csv.build_csv_text()

    assert (DATASET_DIR / "feedback_samples.csv").read_bytes().decode("utf-8") == expected


def test_dataset_jsonl_submitted_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    invalid_lines = load_make_csv().read_invalid_lines()
    source = DATASET_DIR / "feedback_samples.jsonl"
    file_lines = source.read_bytes().split(b"\n")[:-1]
    server = FakeGateway(validator=service_validator)
    server.start()
    try:
        output = tmp_path / "results.jsonl"
        exit_code = run_submit(server.url, source, "--output", str(output))
    finally:
        server.stop()

    assert exit_code == 0
    counts = summary_counts(capsys.readouterr().out)
    assert counts["accepted"] == len(file_lines) - len(invalid_lines)
    assert counts["rejected"] == len(invalid_lines)
    assert sorted(request.body for request in server.requests) == sorted(file_lines)
    rejected = {line for line, entry in read_output(output).items() if entry["outcome"] == "rejected"}
    assert rejected == set(invalid_lines)


def test_dataset_csv_submitted_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    invalid_lines = load_make_csv().read_invalid_lines()
    jsonl_lines = (DATASET_DIR / "feedback_samples.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    valid_records = [
        json.loads(line) for number, line in enumerate(jsonl_lines, start=1) if number not in invalid_lines
    ]
    server = FakeGateway(validator=service_validator)
    server.start()
    try:
        exit_code = run_submit(server.url, DATASET_DIR / "feedback_samples.csv")
    finally:
        server.stop()

    assert exit_code == 0
    assert summary_counts(capsys.readouterr().out)["accepted"] == len(valid_records)
    received = sorted(json.dumps(json.loads(request.body), sort_keys=True) for request in server.requests)
    assert received == sorted(json.dumps(item, sort_keys=True) for item in valid_records)
