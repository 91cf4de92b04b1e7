"""The `feedbackbot` command line: argument parsing and configuration for each subcommand.

To add a subcommand, write an `_add_<name>_parser(subparsers, common)` function that
registers its parser with `handler=` set to a function taking the parsed arguments and
returning the exit code, then append it to `_SUBCOMMAND_PARSERS`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TextIO
from uuid import UUID

import httpx

from feedbackbot import analysis, keys, submit
from feedbackbot.errors import KeyNotFound, KeyStoreError, SnapshotError, SnapshotNotFound, SnapshotQueryError

EXIT_OK = 0
# submit: some request failed (5xx after retries, timeout, connection error);
# export and query: reading the snapshot or writing the output failed.
EXIT_FAILED = 1
# Bad arguments, unreadable input, no API key, a key the server rejected, invalid SQL or date.
EXIT_USAGE = 2
EXIT_NO_DATA = 3  # export and query: no snapshot has been published in the folder yet
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "FEEDBACKBOT_URL"
API_KEY_ENV = "FEEDBACKBOT_API_KEY"
SUBMIT_KEY_ENV = "FEEDBACKBOT_SUBMIT_KEY"
# Written by `make run`, relative to the current directory.
DEMO_KEYS_FILE = Path("data") / "demo-keys.env"


class UsageError(Exception):
    """Invalid arguments or configuration. The CLI prints the message and exits with code 2."""


@dataclass(frozen=True)
class ApiKey:
    """An API key and where it was found, for messages that must not show the key itself."""

    value: str
    source: str

    def masked(self) -> str:
        return mask_secret(self.value)


def mask_secret(secret: str) -> str:
    """Return the first 4 characters of a secret and "…", or only "…" for a secret under 12 characters."""
    if len(secret) < 12:
        return "…"
    return secret[:4] + "…"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines, skipping blank lines and # comments. Returns {} if the file is missing.

    An optional `export ` prefix and matching single or double quotes around the value
    are removed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def resolve_api_key(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> ApiKey:
    """Find the submit API key: --api-key, then the environment, then data/demo-keys.env.

    The order is `explicit`, $FEEDBACKBOT_API_KEY, $FEEDBACKBOT_SUBMIT_KEY, and the
    FEEDBACKBOT_SUBMIT_KEY line of `cwd`/data/demo-keys.env. Empty values count as unset.
    Raises UsageError naming all four places when none has a key.
    """
    if explicit is not None:
        if not explicit.strip():
            raise UsageError("--api-key is empty: pass the key, or omit the option to use the environment")
        return ApiKey(explicit.strip(), "--api-key")

    for name in (API_KEY_ENV, SUBMIT_KEY_ENV):
        value = environ.get(name, "").strip()
        if value:
            return ApiKey(value, f"${name}")

    keys_file = cwd / DEMO_KEYS_FILE
    value = read_env_file(keys_file).get(SUBMIT_KEY_ENV, "").strip()
    if value:
        return ApiKey(value, str(keys_file))

    raise UsageError(
        "no API key found. Pass --api-key KEY, set FEEDBACKBOT_API_KEY or FEEDBACKBOT_SUBMIT_KEY, "
        f"or run `make run`, which writes FEEDBACKBOT_SUBMIT_KEY to {keys_file}."
    )


def resolve_base_url(explicit: str | None, environ: Mapping[str, str]) -> str:
    """Return the gateway base URL from --url, else $FEEDBACKBOT_URL, else DEFAULT_URL."""
    if explicit is not None:
        value, source = explicit, "--url"
    elif environ.get(URL_ENV, "").strip():
        value, source = environ[URL_ENV], f"${URL_ENV}"
    else:
        return DEFAULT_URL

    value = value.strip()
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise UsageError(f"invalid URL {value!r} in {source}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"invalid URL {value!r} in {source}: expected http://HOST[:PORT] or https://HOST[:PORT]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, got {text}")
    return value


# -- submit ---------------------------------------------------------------------------------

_SUBMIT_EPILOG = f"""\
FILE is JSONL (one JSON object per line, each posted byte for byte) or CSV with the
header customer_name,customer_email,feedback_text,rating. In CSV, an integer rating
is sent as a number and any other rating as a string, which the server rejects. A JSONL
line that is not valid JSON is rejected locally, with its line number, and not sent.

The API key is taken from --api-key, else ${API_KEY_ENV},
else ${SUBMIT_KEY_ENV}, else the {SUBMIT_KEY_ENV} line of
./{DEMO_KEYS_FILE}. Only its first 4 characters are ever printed.

Responses 429 and 503 are retried after the Retry-After delay, and connection errors
after an exponential backoff, up to --max-attempts in total. Other responses are final.
If a line fails to connect on every attempt before any response has arrived, the
server is taken to be down and the remaining lines are not sent.

Exit status:
  0  every line got a definite answer: 2xx accepted, or 4xx or local rejection
  1  at least one line failed: 5xx, or 429 or 503 after all attempts, timeout,
     connection error
  2  usage error: bad arguments or file, no API key, or the server rejected the key
     (401 or 403), which also stops sending the remaining lines
"""


def _add_submit_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "submit",
        parents=[common],
        help="post feedback from a JSONL or CSV file to POST /v1/feedback",
        description="Post every record of a JSONL or CSV file to the gateway's POST /v1/feedback, then print a summary.",
        epilog=_SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="JSONL or CSV file of feedback submissions")
    parser.add_argument(
        "--url",
        help=f"gateway base URL. Requests go to URL{submit.FEEDBACK_PATH} (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"API key sent as X-API-Key (default: see below). Other local users can read "
        f"command-line arguments, so prefer ${API_KEY_ENV}",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="maximum number of requests in flight (default: 8)",
    )
    parser.add_argument(
        "--timeout-s",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="timeout of each request attempt, in seconds (default: 30)",
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=5,
        metavar="N",
        help="maximum requests per line, counting the first, for 429, 503 and connection errors (default: 5)",
    )
    parser.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help="input format (default: from the extension: .jsonl or .ndjson for jsonl, .csv for csv)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write one JSON line per input line: line number, outcome, HTTP status, attempts, "
        "and the feedback id or the error",
    )
    parser.set_defaults(handler=_run_submit)


def _run_submit(args: argparse.Namespace) -> int:
    try:
        input_format = args.format or submit.infer_format(args.file)
        if input_format is None:
            raise UsageError(
                f"cannot tell the format of {args.file} from its extension {args.file.suffix!r}: "
                "pass --format jsonl or --format csv"
            )
        api_key = resolve_api_key(args.api_key, os.environ, Path.cwd())
        settings = submit.SubmitSettings(
            base_url=resolve_base_url(args.url, os.environ),
            api_key=api_key.value,
            concurrency=args.concurrency,
            timeout_s=args.timeout_s,
            max_attempts=args.max_attempts,
        )
        records = submit.read_records(args.file, input_format)
        if not records:
            raise UsageError(f"{args.file} contains no records")
        # Opened before sending, so that an unwritable path fails before any request is made.
        output_file = args.output.open("w", encoding="utf-8") if args.output else None
    except (UsageError, submit.InputFileError) as exc:
        _print_error(args, str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _print_error(args, f"cannot write {args.output}: {exc.strerror or exc}")
        return EXIT_USAGE

    print(
        f"Submitting {len(records)} records from {args.file} to {settings.endpoint} "
        f"with API key {api_key.masked()} from {api_key.source}",
        file=sys.stderr,
    )
    try:
        report = submit.run_submission(records, settings)
    except KeyboardInterrupt:
        if output_file is not None:
            output_file.close()
        _print_error(args, "interrupted, so no summary or output file was written")
        return EXIT_INTERRUPTED

    if output_file is not None:
        with output_file:
            submit.write_results(output_file, report.results)

    print(submit.format_summary(report))

    if report.auth_failure is not None:
        failure = report.auth_failure
        message = failure.error.message if failure.error else ""
        _print_error(
            args,
            f"the server rejected the API key from {api_key.source} with {failure.status} "
            f"(request ID {failure.request_id or 'none'}): {message} "
            f"Sending stopped, and {report.count(submit.Outcome.NOT_SENT)} records were not sent. "
            "Check the key. `make run` writes the demo submit key to data/demo-keys.env.",
        )
        return EXIT_USAGE
    if report.unreachable is not None:
        failure = report.unreachable
        message = failure.error.message if failure.error else ""
        _print_error(
            args,
            f"cannot connect to {settings.endpoint} after {failure.attempts} attempts: {message}. "
            f"Sending stopped, and {report.count(submit.Outcome.NOT_SENT)} records were not sent. "
            "Check that the service is running (make run) and that --url or $FEEDBACKBOT_URL is right.",
        )
    if report.count(submit.Outcome.FAILED):
        return EXIT_FAILED
    return EXIT_OK


# -- export and query ------------------------------------------------------------------------

_SNAPSHOT_EPILOG = f"""\
export and query read the Parquet snapshots that the persistence deployment publishes every
few seconds, never the service's DuckDB file. The snapshot folder is --snapshot-dir, else
${analysis.SNAPSHOT_DIR_ENV}, else data/snapshots under $FEEDBACKBOT_HOME or the current
directory. docs/schema.md describes the columns. The output contains customer names, email
addresses and texts.

Exit status:
  0  done
  1  reading the snapshot or writing the output failed
  2  usage error: bad arguments (a missing --output folder included), an invalid date or
     invalid SQL
  3  no snapshot has been published in the folder yet
"""

# Share of the export, in percent, between two progress lines when stderr is not a terminal.
_PROGRESS_STEP_PERCENT = 10.0


def _since_argument(text: str) -> datetime:
    try:
        return analysis.parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_snapshot_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--snapshot-dir",
        type=Path,
        metavar="DIR",
        help=f"snapshot folder, the one that contains manifest.json (default: ${analysis.SNAPSHOT_DIR_ENV}, "
        "else data/snapshots)",
    )


def _add_export_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "export",
        parents=[common],
        help="write feedback or notifications since a date to a Parquet or CSV file",
        description="Write the newest version of each feedback row received since DATE (or of each\n"
        "outbox entry created since DATE), oldest first, to a Parquet or CSV file.",
        epilog=_SNAPSHOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", required=True, choices=("parquet", "csv"), help="output file format")
    parser.add_argument(
        "--since",
        required=True,
        type=_since_argument,
        metavar="DATE",
        help="first day to export, YYYY-MM-DD in UTC, or an ISO 8601 time such as 2026-12-01T08:00:00+01:00",
    )
    parser.add_argument(
        "--table",
        choices=tuple(analysis.EXPORT_TIME_COLUMNS),
        default="feedback",
        help="feedback filters on received_at, notifications on created_at (default: feedback)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="file to write, replaced if it exists (default: TABLE-since-DATE.FORMAT in the current directory)",
    )
    _add_snapshot_dir_argument(parser)
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    output = args.output or Path(f"{args.table}-since-{args.since.date().isoformat()}.{args.format}")
    if not output.parent.absolute().is_dir():
        _print_error(args, f"the folder of --output {output} does not exist; create it or choose another path")
        return EXIT_USAGE

    try:
        connection = analysis.connect(args.snapshot_dir)
    except SnapshotError as exc:
        return _report_snapshot_error(args, exc)

    with connection:
        try:
            total = analysis.count_since(connection, args.table, args.since)
            print(
                f"Exporting {total} rows of {args.table} since {args.since.isoformat()} to {output}",
                file=sys.stderr,
            )
            started = time.monotonic()
            rows = analysis.export(
                connection,
                view=args.table,
                since=args.since,
                output=output,
                file_format=args.format,
                on_progress=_progress_printer(sys.stderr),
            )
        except SnapshotError as exc:
            _end_progress_line(sys.stderr)
            return _report_snapshot_error(args, exc)
        except KeyboardInterrupt:
            _end_progress_line(sys.stderr)
            _print_error(args, f"interrupted, so {output} was not written")
            return EXIT_INTERRUPTED

    _end_progress_line(sys.stderr)
    size_mib = output.stat().st_size / 2**20
    print(
        f"Exported {rows} rows to {output} ({size_mib:.1f} MiB) in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return EXIT_OK


def _progress_printer(stream: TextIO) -> Callable[[float], None]:
    """Return a callback that shows export progress: one updated line on a terminal, else a line per step."""
    next_step = [_PROGRESS_STEP_PERCENT]

    def show(percent: float) -> None:
        if stream.isatty():
            print(f"\r  {percent:5.1f}% exported", end="", file=stream, flush=True)
        elif percent >= next_step[0]:
            print(f"  {percent:.0f}% exported", file=stream, flush=True)
            next_step[0] = (percent // _PROGRESS_STEP_PERCENT + 1) * _PROGRESS_STEP_PERCENT

    return show


def _end_progress_line(stream: TextIO) -> None:
    if stream.isatty():
        print("\r\033[K", end="", file=stream, flush=True)


def _add_query_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "query",
        parents=[common],
        help="run a SQL query on the snapshots and print the result",
        description="Run a DuckDB SQL query on the views feedback, notifications, feedback_daily and\n"
        "snapshot_info, and print the result.",
        epilog=_SNAPSHOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sql", metavar="SQL", help='the query, for example "SELECT rating, count(*) FROM feedback GROUP BY ALL"'
    )
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table for people, csv with a header line, or json as an array of objects (default: table)",
    )
    parser.add_argument(
        "--max-rows",
        type=_positive_int,
        default=40,
        metavar="N",
        help="rows shown by --format table; the first and last are kept (default: 40). csv and json print all rows",
    )
    _add_snapshot_dir_argument(parser)
    parser.set_defaults(handler=_run_query)


def _run_query(args: argparse.Namespace) -> int:
    try:
        connection = analysis.connect(args.snapshot_dir)
    except SnapshotError as exc:
        return _report_snapshot_error(args, exc)

    with connection:
        try:
            result = analysis.run_query(connection, args.sql)
            age_s = analysis.snapshot_age_s(connection)
        except SnapshotError as exc:
            return _report_snapshot_error(args, exc)

        if result is None:
            print("The statement returned no rows.", file=sys.stderr)
        elif args.format == "table":
            result.show(max_rows=args.max_rows, max_width=shutil.get_terminal_size().columns, null_value="NULL")
            print(f"Snapshot data as of {age_s:.0f} s ago.", file=sys.stderr)
        elif args.format == "csv":
            _write_csv(sys.stdout, result.columns, result.fetchall())
        else:
            _write_json(sys.stdout, result.columns, result.fetchall())
    return EXIT_OK


def _report_snapshot_error(args: argparse.Namespace, exc: SnapshotError) -> int:
    _print_error(args, str(exc))
    if isinstance(exc, SnapshotNotFound):
        return EXIT_NO_DATA
    if isinstance(exc, SnapshotQueryError):
        return EXIT_USAGE
    return EXIT_FAILED


def _plain_value(value: object) -> object:
    """Return a value that csv and json write readably: ISO 8601 times, UUIDs as text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal, timedelta)):
        return str(value)
    return value


def _write_csv(stream: TextIO, columns: list[str], rows: Iterable[tuple]) -> None:
    writer = csv.writer(stream)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_plain_value(value) for value in row])


def _write_json(stream: TextIO, columns: list[str], rows: Iterable[tuple]) -> None:
    stream.write("[")
    separator = "\n"
    for row in rows:
        record = {column: _plain_value(value) for column, value in zip(columns, row)}
        stream.write(separator + json.dumps(record, ensure_ascii=False, default=str))
        separator = ",\n"
    stream.write("\n]\n")


# -- keys ------------------------------------------------------------------------------------

_KEYS_EPILOG = f"""\
The key store (--keys-file, else ${keys.KEYS_FILE_ENV}, else ./{keys.DEFAULT_KEYS_FILE}) holds
only the SHA-256 of each key. create and rotate print a new key once, on stdout; nothing
can show it again. create, revoke, rotate and import also render the gateway's key map and
reload the gateway that runs from --gateway-dir (else ${keys.GATEWAY_DIR_ENV}, else the folder
gateway next to the store). They return once the gateway uses the new keys, without a
restart and without dropping requests. If no gateway runs there, the change is saved and
applies when it starts.

Roles: submit posts feedback, analyst reads it (GET under /v1/feedback/), admin may call
every route, /v1/admin/ included.

Exit status:
  0  done (also when no gateway runs)
  1  the store cannot be read or written, or the gateway did not reload
  2  usage error: bad arguments or an unknown key id
"""


def _label_argument(text: str) -> str:
    try:
        return keys.check_label(text)
    except KeyStoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_keys_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    store_options = argparse.ArgumentParser(add_help=False, parents=[common])
    store_options.add_argument(
        "--keys-file",
        type=Path,
        metavar="PATH",
        help=f"the key store (default: ${keys.KEYS_FILE_ENV}, else {keys.DEFAULT_KEYS_FILE})",
    )
    store_options.add_argument(
        "--gateway-dir",
        type=Path,
        metavar="DIR",
        help=f"run folder of the gateway to reload (default: ${keys.GATEWAY_DIR_ENV}, else gateway next to the store)",
    )

    parser = subparsers.add_parser(
        "keys",
        help="create, list, revoke and rotate the gateway's API keys",
        description="Manage the API keys of the gateway.",
        epilog=_KEYS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)

    create = actions.add_parser("create", parents=[store_options], help="create a key and print it once")
    create.add_argument("--role", required=True, choices=keys.ROLES, help="what the key may call")
    create.add_argument(
        "--label",
        type=_label_argument,
        default="",
        metavar="TEXT",
        help=f"note for `keys list`, such as the client's name, at most {keys.MAX_LABEL_CHARS} characters",
    )

    listing = actions.add_parser("list", parents=[store_options], help="list the keys, never the keys themselves")
    listing.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")

    revoke = actions.add_parser("revoke", parents=[store_options], help="revoke a key; it gets 401 from then on")
    revoke.add_argument("key_id", metavar="KEY_ID", help="id from `keys list`, such as k-3f2a9c01b7de")

    rotate = actions.add_parser(
        "rotate", parents=[store_options], help="replace a key: revoke it and print a new one with its role and label"
    )
    rotate.add_argument("key_id", metavar="KEY_ID", help="id from `keys list`, such as k-3f2a9c01b7de")

    import_plain = actions.add_parser(
        "import",
        parents=[store_options],
        help="hash the keys of an old 'ROLE KEY' file into the store and delete that file",
    )
    import_plain.add_argument("plain_file", type=Path, metavar="FILE", help="the old file, such as data/api-keys.txt")

    for action in (create, listing, revoke, rotate, import_plain):
        action.set_defaults(handler=_run_keys)


def _run_keys(args: argparse.Namespace) -> int:
    keys_file = args.keys_file or keys.default_keys_file()
    gateway_dir = args.gateway_dir or keys.default_gateway_dir(keys_file)
    store = keys.KeyStore(keys_file, gateway_dir)
    try:
        if args.keys_action == "list":
            return _list_keys(store, args.format)
        changed = _change_keys(store, args)
    except KeyNotFound as exc:
        _print_error(args, str(exc))
        return EXIT_USAGE
    except KeyStoreError as exc:
        _print_error(args, str(exc))
        return EXIT_FAILED

    if not changed:
        return EXIT_OK
    try:
        pid = keys.reload_gateway(gateway_dir)
    except KeyStoreError as exc:
        _print_error(args, f"the change is saved in {keys_file}, but {exc}")
        return EXIT_FAILED
    if pid is None:
        print(
            f"No gateway runs from {gateway_dir} (no live pid in {gateway_dir / 'nginx.pid'}); "
            "the change is saved and applies when the gateway starts.",
            file=sys.stderr,
        )
    else:
        print(f"Reloaded the gateway (pid {pid}); the change is in effect.", file=sys.stderr)
    return EXIT_OK


def _change_keys(store: keys.KeyStore, args: argparse.Namespace) -> bool:
    """Apply create, revoke, rotate or import to the store. Returns False if nothing changed."""
    if args.keys_action == "create":
        record, key = store.create(args.role, args.label)
        print(key)
        print(
            f"Created key {record.id} with role {record.role}. This is the only time the key is shown; "
            "store it now.",
            file=sys.stderr,
        )
        return True

    if args.keys_action == "revoke":
        record, changed = store.revoke(args.key_id)
        if not changed:
            print(f"Key {record.id} was already revoked at {record.revoked_at}.", file=sys.stderr)
        else:
            print(f"Revoked key {record.id} (role {record.role}).", file=sys.stderr)
        return changed

    if args.keys_action == "rotate":
        old, new, key = store.rotate(args.key_id)
        print(key)
        print(
            f"Revoked key {old.id} and created key {new.id} with role {new.role}. This is the only time "
            "the new key is shown; store it now.",
            file=sys.stderr,
        )
        return True

    added = store.import_plain(args.plain_file)
    print(
        f"Imported {len(added)} keys from {args.plain_file} into {store.path} as hashes, "
        f"and deleted {args.plain_file}.",
        file=sys.stderr,
    )
    return True


def _list_keys(store: keys.KeyStore, output_format: str) -> int:
    if not store.exists():
        print(
            f"No key store at {store.path} yet; create a key with `feedbackbot keys create --role ROLE`.",
            file=sys.stderr,
        )
    records = store.load()
    if output_format == "json":
        rows = [
            {"id": r.id, "role": r.role, "label": r.label, "created_at": r.created_at, "revoked_at": r.revoked_at}
            for r in records
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK

    header = ("ID", "ROLE", "CREATED", "REVOKED", "LABEL")
    rows = [(r.id, r.role, r.created_at, r.revoked_at or "-", r.label) for r in records]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


# -- dispatch -------------------------------------------------------------------------------

_SUBCOMMAND_PARSERS: list[Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]] = [
    _add_submit_parser,
    _add_export_parser,
    _add_query_parser,
    _add_keys_parser,
]


def _print_error(args: argparse.Namespace, message: str) -> None:
    print(f"feedbackbot {args.command}: error: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per entry of `_SUBCOMMAND_PARSERS`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more to stderr: -v for retries and failures, -vv for HTTP requests",
    )

    parser = argparse.ArgumentParser(prog="feedbackbot", description="Customer-feedback ingestion service tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in _SUBCOMMAND_PARSERS:
        add_parser(subparsers, common)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("feedbackbot").setLevel(level)
    # httpx logs each request at INFO, which is too much below -vv.
    logging.getLogger("httpx").setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit code, 2 for usage errors."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits with 0 after --help and 2 after a usage error.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    _configure_logging(getattr(args, "verbose", 0))
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
