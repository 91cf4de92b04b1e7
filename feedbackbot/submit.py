"""Client side of POST /v1/feedback: read a JSONL or CSV file, post each record, report.

`read_records` turns a file into one `InputRecord` per line or CSV row. `run_submission`
posts them with bounded concurrency and retries, and returns a `SubmitReport` with one
`LineResult` per record. `format_summary` and `write_results` present that report.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import email.utils
import io
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Literal

import httpx
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger(__name__)

FEEDBACK_PATH = "/v1/feedback"
CSV_COLUMNS = ("customer_name", "customer_email", "feedback_text", "rating")
InputFormat = Literal["jsonl", "csv"]

# 429 and 503 mean "not processed, try again later". Every other status is final.
RETRY_STATUSES = frozenset({429, 503})
# A 401 or 403 rejects the key, not the record, so the run stops instead of sending the rest.
AUTH_STATUSES = frozenset({401, 403})

# Errors raised before a response arrived where a retry is reasonable. ConnectError and
# ConnectTimeout happen before the request is sent. The others can happen after the server
# has read the request.
# NOTE: POST /v1/feedback takes no idempotency key, so a retry after ReadError, WriteError
# or RemoteProtocolError can store the same feedback twice. Read and write timeouts are
# not retried for that reason.
RETRYABLE_TRANSPORT_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)

_INTEGER = re.compile(r"[+-]?[0-9]+")


class InputFileError(Exception):
    """The input file is missing, unreadable or not in the expected format as a whole."""


class Outcome(str, Enum):
    """Final state of one input record."""

    ACCEPTED = "accepted"  # a 2xx response
    REJECTED = "rejected"  # a 4xx response other than 429, or rejected locally and never sent
    FAILED = "failed"  # a 5xx response, 429 on every attempt, a timeout or a connection error
    # The run stopped before this record was sent: on a 401 or 403, or because the
    # server could not be reached at all.
    NOT_SENT = "not_sent"


@dataclass(frozen=True)
class FieldError:
    """One rejected field from a 422 validation_failed response."""

    field: str
    message: str


@dataclass(frozen=True)
class ErrorInfo:
    """Error of one record: the server's error object, or a local or transport error."""

    code: str
    message: str
    fields: tuple[FieldError, ...] = ()


@dataclass(frozen=True)
class InputRecord:
    """One line of a JSONL file or one row of a CSV file.

    `body` is the JSON request body. It is None when the record was rejected locally, and
    then `local_error` contains the reason.
    """

    line: int
    body: bytes | None
    local_error: ErrorInfo | None = None


@dataclass(frozen=True)
class LineResult:
    """Final result of one input record: outcome, HTTP status, attempts, and the id or error."""

    line: int
    outcome: Outcome
    status: int | None = None  # HTTP status of the last response, None when none arrived
    attempts: int = 0  # requests sent for this record, retries included
    feedback_id: str | None = None
    sentiment: dict | None = None
    error: ErrorInfo | None = None
    request_id: str | None = None  # X-Request-ID of the last response

    @property
    def local(self) -> bool:
        """Whether the record was rejected before anything was sent."""
        return self.attempts == 0 and self.outcome is Outcome.REJECTED

    def reason(self) -> str:
        """Return the grouping key for the summary, such as "422 validation_failed [rating]"."""
        if self.error is None:
            return str(self.status)
        if self.local:
            return f"local {self.error.code}"
        prefix = f"{self.status} " if self.status is not None else ""
        fields = f" [{', '.join(item.field for item in self.error.fields)}]" if self.error.fields else ""
        return f"{prefix}{self.error.code}{fields}"

    def to_json(self) -> dict:
        """Return the object written for this record by `write_results`."""
        data: dict = {"line": self.line, "outcome": self.outcome.value, "status": self.status, "attempts": self.attempts}
        if self.feedback_id is not None:
            data["id"] = self.feedback_id
        if self.sentiment is not None:
            data["sentiment"] = self.sentiment
        if self.error is not None:
            data["error"] = {"code": self.error.code, "message": self.error.message}
            if self.error.fields:
                data["error"]["fields"] = [{"field": item.field, "message": item.message} for item in self.error.fields]
        if self.request_id is not None:
            data["request_id"] = self.request_id
        return data


@dataclass(frozen=True)
class SubmitSettings:
    """Submission settings: gateway URL, API key, concurrency, timeout and retry limits."""

    base_url: str
    api_key: str
    concurrency: int = 8
    timeout_s: float = 30.0  # per request attempt
    max_attempts: int = 5  # per record, counting the first attempt
    backoff_initial_s: float = 0.5  # wait before the first retry when the server gives no Retry-After
    backoff_max_s: float = 30.0
    # A Retry-After longer than this ends the record as failed instead of waiting.
    max_retry_after_s: float = 120.0

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + FEEDBACK_PATH


@dataclass
class SubmitReport:
    """Results of a run, one per input record in file order, plus run-wide figures."""

    results: list[LineResult]
    retries: int = 0
    elapsed_s: float = 0.0
    # The first 401 or 403 response, which stopped the run. None when the key was accepted.
    auth_failure: LineResult | None = None
    # The first record that failed with connection errors on every attempt before any
    # response had arrived. It stopped the run. None when the server was reachable.
    unreachable: LineResult | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for result in self.results if result.outcome is outcome)

    @property
    def sent(self) -> int:
        """Number of records for which at least one request was sent."""
        return sum(1 for result in self.results if result.attempts > 0)


# -- reading input files ------------------------------------------------------------------


def infer_format(path: Path) -> InputFormat | None:
    """Return the input format that the file extension implies, or None if it implies none."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return None


def read_records(path: Path, input_format: InputFormat) -> list[InputRecord]:
    """Read every record of a JSONL or CSV file. Raises InputFileError for file-level problems."""
    if input_format == "jsonl":
        return read_jsonl(path)
    return read_csv(path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _reject_json_constant(name: str) -> None:
    # json.loads accepts NaN and Infinity, which are not JSON and would not reach the server intact.
    raise ValueError(f"{name} is not valid JSON")


def read_jsonl(path: Path) -> list[InputRecord]:
    """Read a JSONL file: one JSON value per line, posted byte for byte as it appears.

    Blank lines are skipped. A line that is not UTF-8 or not valid JSON becomes a
    locally rejected record with its line number, and is never sent. Lines split on
    LF only, because a JSON string may contain other Unicode line separators.
    """
    records = []
    for line_number, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = ErrorInfo("invalid_utf8", f"not valid UTF-8 at byte {exc.start} of the line")
            records.append(InputRecord(line_number, None, error))
            continue

        try:
            json.loads(text, parse_constant=_reject_json_constant)
        except ValueError as exc:
            records.append(InputRecord(line_number, None, ErrorInfo("invalid_json", f"not valid JSON: {exc}")))
            continue

        records.append(InputRecord(line_number, raw))
    return records


def parse_csv_rating(value: str) -> int | str:
    """Return the rating as an int when the cell is an integer, else the cell unchanged.

    A non-integer cell such as "4.5" or "five" is sent as a string, so that the server
    rejects it with its usual validation message.
    """
    stripped = value.strip()
    if _INTEGER.fullmatch(stripped):
        return int(stripped)
    return value


def read_csv(path: Path) -> list[InputRecord]:
    """Read an RFC 4180 CSV file with the header customer_name,customer_email,feedback_text,rating.

    The columns may come in any order, and a UTF-8 byte order mark is ignored. Each row
    becomes a JSON object, with the rating converted by `parse_csv_rating`. The line of
    a record is the physical line where its row starts, counting the header as line 1.
    Rows whose cells are all blank are skipped. A row with the wrong number of fields is
    rejected locally. A missing or extra column, text that is not UTF-8 or broken quoting
    raises InputFileError.
    """
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path} is not valid UTF-8 (byte {exc.start}): save it as UTF-8 and retry") from exc

    # strict=True turns broken quoting into csv.Error instead of silently merged fields.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InputFileError(f"{path} is empty: expected the header row {','.join(CSV_COLUMNS)}")
        columns = [name.strip() for name in header]
        _check_csv_header(path, columns)

        records = []
        start_line = reader.line_num + 1
        for row in reader:
            line_number = start_line
            start_line = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                message = f"the row has {len(row)} fields but the header has {len(columns)}"
                records.append(InputRecord(line_number, None, ErrorInfo("invalid_csv_row", message)))
                continue

            values: dict[str, object] = dict(zip(columns, row))
            values["rating"] = parse_csv_rating(str(values["rating"]))
            body = json.dumps(values, ensure_ascii=False).encode("utf-8")
            records.append(InputRecord(line_number, body))
    except csv.Error as exc:
        raise InputFileError(f"{path}, line {reader.line_num}: invalid CSV: {exc}") from exc
    return records


def _check_csv_header(path: Path, columns: list[str]) -> None:
    missing = [name for name in CSV_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    problems = []
    if missing:
        problems.append(f"missing columns {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown columns {', '.join(repr(name) for name in unknown)}")
    if duplicated:
        problems.append(f"duplicated columns {', '.join(duplicated)}")
    if problems:
        raise InputFileError(
            f"{path}: invalid header row ({'; '.join(problems)}). "
            f"Expected exactly the columns {','.join(CSV_COLUMNS)}, in any order."
        )


# -- sending --------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the wait in seconds that a Retry-After header requests, or None if absent or invalid.

    The header contains either a whole number of seconds or an HTTP date. A date in the
    past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, settings: SubmitSettings) -> float:
    """Return the wait before retry number `attempt` (1-based) when the server gave no Retry-After.

    The wait doubles with each attempt up to `backoff_max_s`. It is then drawn from the
    upper half of that range, so that workers that failed together do not retry together.
    """
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _parse_error(response: httpx.Response) -> ErrorInfo:
    """Read the contract's {"error": {...}} body, or describe a response that has none."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = payload.get("error") if isinstance(payload, dict) else None

    if isinstance(detail, dict):
        code = str(detail.get("code") or f"http_{response.status_code}")
        message = str(detail.get("message") or response.reason_phrase)
        fields = tuple(
            FieldError(str(item.get("field", "")), str(item.get("message", "")))
            for item in detail.get("fields") or []
            if isinstance(item, dict)
        )
        return ErrorInfo(code, message, fields)

    # Not the contract's shape, for example an HTML page from a proxy.
    snippet = " ".join(response.text.split())[:200]
    message = f"{response.status_code} {response.reason_phrase}" + (f": {snippet}" if snippet else "")
    return ErrorInfo(f"http_{response.status_code}", message)


def _request_id(response: httpx.Response) -> str | None:
    header = response.headers.get("X-Request-ID")
    if header:
        return header
    try:
        payload = response.json()
    except ValueError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload["error"].get("request_id")
    return None


def _accepted_result(line: int, response: httpx.Response, attempts: int) -> LineResult:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        logger.warning("line %d: %d response without a JSON object body", line, response.status_code)
        payload = {}
    return LineResult(
        line,
        Outcome.ACCEPTED,
        status=response.status_code,
        attempts=attempts,
        feedback_id=payload.get("id"),
        sentiment=payload.get("sentiment"),
        request_id=_request_id(response),
    )


@dataclass
class _RunState:
    retries: int = 0
    any_response: bool = False
    auth_failure: LineResult | None = None
    unreachable: LineResult | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _send_with_retries(
    client: httpx.AsyncClient, record: InputRecord, settings: SubmitSettings, state: _RunState
) -> LineResult:
    """Post one record, retrying 429, 503 and connection errors up to `settings.max_attempts`."""
    attempt = 0
    while True:
        attempt += 1
        status: int | None = None
        request_id: str | None = None
        retry_after: float | None = None

        try:
            response = await client.post(settings.endpoint, content=record.body)
        except RETRYABLE_TRANSPORT_ERRORS as exc:
            error = ErrorInfo("connection_error", f"{type(exc).__name__}: {exc}")
        except httpx.TimeoutException as exc:
            message = (
                f"no response within {settings.timeout_s:g} s ({type(exc).__name__}). "
                "Not retried, because the server may have stored the feedback."
            )
            return LineResult(record.line, Outcome.FAILED, attempts=attempt, error=ErrorInfo("timeout", message))
        except httpx.HTTPError as exc:
            error = ErrorInfo("transport_error", f"{type(exc).__name__}: {exc}")
            return LineResult(record.line, Outcome.FAILED, attempts=attempt, error=error)
        else:
            state.any_response = True
            status = response.status_code
            request_id = _request_id(response)
            if 200 <= status < 300:
                return _accepted_result(record.line, response, attempt)

            error = _parse_error(response)
            if status not in RETRY_STATUSES:
                outcome = Outcome.REJECTED if 400 <= status < 500 else Outcome.FAILED
                return LineResult(record.line, outcome, status, attempt, error=error, request_id=request_id)

            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None and retry_after > settings.max_retry_after_s:
                message = (
                    f"{error.message} The server requested a wait of {retry_after:g} s, more than the "
                    f"{settings.max_retry_after_s:g} s limit, so the line was not retried."
                )
                error = ErrorInfo(error.code, message, error.fields)
                return LineResult(record.line, Outcome.FAILED, status, attempt, error=error, request_id=request_id)

        if attempt >= settings.max_attempts:
            return LineResult(record.line, Outcome.FAILED, status, attempt, error=error, request_id=request_id)

        delay = retry_after if retry_after is not None else backoff_delay(attempt, settings)
        state.retries += 1
        logger.info(
            "line %d: %s %s (request ID %s), retrying in %.1f s, attempt %d of %d",
            record.line,
            status if status is not None else "no response,",
            error.code,
            request_id or "none",
            delay,
            attempt + 1,
            settings.max_attempts,
        )
        await asyncio.sleep(delay)


async def _worker(
    client: httpx.AsyncClient,
    queue: Iterator[InputRecord],
    settings: SubmitSettings,
    state: _RunState,
    results: dict[int, LineResult],
    on_result: Callable[[LineResult], None],
) -> None:
    # All workers share one iterator. next() never awaits, so no two workers get the same record.
    for record in queue:
        if state.stop.is_set():
            return
        result = await _send_with_retries(client, record, settings, state)
        results[record.line] = result
        if result.status in AUTH_STATUSES and state.auth_failure is None:
            state.auth_failure = result
            state.stop.set()
        if result.outcome is Outcome.FAILED:
            logger.info("line %d failed: %s (attempts: %d)", result.line, result.reason(), result.attempts)
            # Every attempt failed to connect and no request has had a response, so the
            # server is most likely down. Stop instead of retrying each remaining record.
            if result.error and result.error.code == "connection_error" and not state.any_response:
                if state.unreachable is None:
                    state.unreachable = result
                state.stop.set()
        on_result(result)


def _user_agent() -> str:
    try:
        return f"feedbackbot-cli/{version('feedbackbot')}"
    except PackageNotFoundError:
        return "feedbackbot-cli"


async def submit_records(
    records: Sequence[InputRecord],
    settings: SubmitSettings,
    on_result: Callable[[LineResult], None] = lambda result: None,
) -> SubmitReport:
    """Post every record that has a body and return one result per record, in input order.

    At most `settings.concurrency` requests are in flight. `on_result` is called once per
    record as its result becomes final, locally rejected records first. No further
    records are sent after a 401 or 403 response, or after a record fails to connect on
    every attempt before any response has arrived. The unsent records end as NOT_SENT.
    """
    started = time.monotonic()
    results: dict[int, LineResult] = {}
    pending = []
    for record in records:
        if record.local_error is not None:
            results[record.line] = LineResult(record.line, Outcome.REJECTED, error=record.local_error)
            on_result(results[record.line])
        else:
            pending.append(record)

    state = _RunState()
    headers = {
        "X-API-Key": settings.api_key,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": _user_agent(),
    }
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    queue = iter(pending)
    async with httpx.AsyncClient(headers=headers, timeout=settings.timeout_s, limits=limits) as client:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(settings.concurrency, len(pending))):
                group.create_task(_worker(client, queue, settings, state, results, on_result))

    for record in pending:
        if record.line not in results:
            results[record.line] = LineResult(record.line, Outcome.NOT_SENT)
            on_result(results[record.line])

    return SubmitReport(
        results=[results[record.line] for record in records],
        retries=state.retries,
        elapsed_s=time.monotonic() - started,
        auth_failure=state.auth_failure,
        unreachable=state.unreachable,
    )


def run_submission(
    records: Sequence[InputRecord], settings: SubmitSettings, *, progress: bool | None = None
) -> SubmitReport:
    """Run `submit_records` with a tqdm progress bar on stderr.

    With `progress=None` the bar is shown only when stderr is a terminal. Log records
    go through tqdm while the bar is shown, so they do not break it.
    """
    counts: Counter[str] = Counter()
    disable = None if progress is None else not progress
    with tqdm(total=len(records), unit="line", desc="submit", file=sys.stderr, disable=disable) as bar:

        def on_result(result: LineResult) -> None:
            counts[result.outcome.value] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)

        with logging_redirect_tqdm():
            return asyncio.run(submit_records(records, settings, on_result))


# -- reporting ------------------------------------------------------------------------------


def _describe_result(result: LineResult) -> list[str]:
    if result.error is None:
        return [f"  line {result.line}: {result.status}"]
    if result.local:
        return [f"  line {result.line}: not sent, {result.error.message}"]

    status = f"{result.status} " if result.status is not None else ""
    attempts = f" after {result.attempts} attempts" if result.attempts > 1 else ""
    if not result.error.fields:
        return [f"  line {result.line}: {status}{result.error.code}{attempts}: {result.error.message}"]
    lines = [f"  line {result.line}: {status}{result.error.code}{attempts}"]
    lines += [f"    {item.field}: {item.message}" for item in result.error.fields]
    return lines


def _describe_group(title: str, results: list[LineResult], max_examples: int) -> list[str]:
    lines = ["", f"{title} by reason:"]
    for reason, count in Counter(result.reason() for result in results).most_common():
        lines.append(f"  {count:>6}  {reason}")
    lines.append(f"First {min(max_examples, len(results))} of {len(results)}:")
    for result in results[:max_examples]:
        lines.extend(_describe_result(result))
    return lines


def format_summary(report: SubmitReport, max_examples: int = 5) -> str:
    """Format the run's counts, rejected and failed lines grouped by reason, and the first few of each."""
    rejected = [result for result in report.results if result.outcome is Outcome.REJECTED]
    failed = [result for result in report.results if result.outcome is Outcome.FAILED]
    local = sum(1 for result in rejected if result.local)
    not_sent = report.count(Outcome.NOT_SENT)

    counts = (
        f"lines: {len(report.results)}  sent: {report.sent}  "
        f"accepted: {report.count(Outcome.ACCEPTED)}  "
        f"rejected: {len(rejected)}" + (f" ({local} locally)" if local else "") + f"  "
        f"failed: {len(failed)}"
    )
    if not_sent:
        counts += f"  not sent: {not_sent}"
    counts += f"  retries: {report.retries}  time: {report.elapsed_s:.1f} s"

    lines = [counts]
    if rejected:
        lines += _describe_group("Rejected lines", rejected, max_examples)
    if failed:
        lines += _describe_group("Failed lines", failed, max_examples)
    return "\n".join(lines)


def write_results(file: IO[str], results: Sequence[LineResult]) -> None:
    """Write one JSON object per result, one per line, in input order."""
    for result in results:
        file.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
