"""Write feedback_samples.csv, the valid lines of feedback_samples.jsonl as CSV.

The invalid lines are those listed in the "Invalid lines" table of README.md in this
folder. Before writing, the script runs every line through the service's own validation
(`models.feedback.validate_submission`). It stops with an error if a listed line passes,
an unlisted line fails, or the fields that fail differ from the table's Fields column.
This way a line edited into or out of validity cannot reach the CSV unnoticed.

Usage:
    python datasets/make_csv.py           # rewrite feedback_samples.csv
    python datasets/make_csv.py --check   # exit 1 if feedback_samples.csv is out of date
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from models.feedback import SUBMISSION_FIELDS, validate_submission

DATASET_DIR = Path(__file__).resolve().parent
JSONL_PATH = DATASET_DIR / "feedback_samples.jsonl"
CSV_PATH = DATASET_DIR / "feedback_samples.csv"
README_PATH = DATASET_DIR / "README.md"

# A row of the README table: "| 12 | rating | 6, above the 1-5 range |".
_INVALID_ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|(.*)\|\s*$")


class DatasetError(Exception):
    """The JSONL file, the README table and the service's validation disagree."""


@dataclass(frozen=True)
class InvalidLine:
    """One row of the README's invalid-lines table."""

    line: int
    fields: frozenset[str]
    reason: str


def read_invalid_lines(readme_path: Path = README_PATH) -> dict[int, InvalidLine]:
    """Parse the "Invalid lines" table of the README, keyed by line number."""
    invalid: dict[int, InvalidLine] = {}
    in_section = False
    for text_line in readme_path.read_text(encoding="utf-8").splitlines():
        if text_line.startswith("## "):
            in_section = text_line.strip() == "## Invalid lines"
            continue
        match = _INVALID_ROW.match(text_line) if in_section else None
        if match is None:
            continue

        line_number = int(match.group(1))
        if line_number in invalid:
            raise DatasetError(f"{readme_path}: line {line_number} is listed twice in the invalid-lines table")
        fields = frozenset(name.strip() for name in match.group(2).split(",") if name.strip())
        invalid[line_number] = InvalidLine(line_number, fields, match.group(3).strip())

    if not invalid:
        raise DatasetError(f"{readme_path}: no rows found under the '## Invalid lines' heading")
    return invalid


def read_jsonl(path: Path = JSONL_PATH) -> list[tuple[int, object]]:
    """Parse every line of the JSONL file and return (1-based line number, value) pairs."""
    records = []
    # newline="" keeps a carriage return inside a line from being read as a line break.
    with path.open(encoding="utf-8", newline="") as file:
        for line_number, text_line in enumerate(file, start=1):
            try:
                records.append((line_number, json.loads(text_line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{line_number}: not valid JSON: {exc}") from exc
    return records


def select_valid_records(
    jsonl_path: Path = JSONL_PATH, readme_path: Path = README_PATH
) -> list[tuple[int, dict]]:
    """Return the (line number, record) pairs that the README does not list as invalid.

    Raises DatasetError, listing every problem, when the service's validation accepts a
    listed line, rejects an unlisted one, or rejects different fields than the table
    names, or when the table names a line past the end of the file.
    """
    invalid_lines = read_invalid_lines(readme_path)
    records = read_jsonl(jsonl_path)

    problems = []
    past_end = sorted(n for n in invalid_lines if n > len(records))
    if past_end:
        problems.append(f"README lists lines {past_end}, but the file has {len(records)} lines")

    valid = []
    for line_number, record in records:
        errors = validate_submission(record).errors
        rejected_fields = frozenset(error.field for error in errors)
        listed = invalid_lines.get(line_number)

        if listed is None and errors:
            messages = "; ".join(f"{error.field}: {error.message}" for error in errors)
            problems.append(f"line {line_number} is not listed as invalid but is rejected: {messages}")
        elif listed is None:
            valid.append((line_number, record))
        elif not errors:
            problems.append(f"line {line_number} is listed as invalid but passes validation")
        elif rejected_fields != listed.fields:
            problems.append(
                f"line {line_number}: README names fields {sorted(listed.fields)}, "
                f"validation rejects {sorted(rejected_fields)}"
            )

    if problems:
        raise DatasetError("\n".join(problems))
    return valid


def render_csv(records: list[dict]) -> str:
    """Render records as RFC 4180 CSV text, with CRLF line endings and fields quoted only when needed."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(SUBMISSION_FIELDS)
    for record in records:
        writer.writerow([record[field] for field in SUBMISSION_FIELDS])
    return buffer.getvalue()


def build_csv_text(jsonl_path: Path = JSONL_PATH, readme_path: Path = README_PATH) -> str:
    """Return the CSV text for the valid records of the JSONL file, in file order."""
    return render_csv([record for _, record in select_valid_records(jsonl_path, readme_path)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with the existing CSV file instead of writing it, and exit 1 if they differ",
    )
    args = parser.parse_args(argv)

    try:
        valid = select_valid_records()
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    expected = render_csv([record for _, record in valid])

    if args.check:
        current = CSV_PATH.read_bytes().decode("utf-8") if CSV_PATH.exists() else None
        if current != expected:
            print(f"{CSV_PATH} is out of date: run python datasets/make_csv.py", file=sys.stderr)
            return 1
        print(f"{CSV_PATH} is up to date ({len(valid)} records)")
        return 0

    CSV_PATH.write_bytes(expected.encode("utf-8"))
    print(f"wrote {len(valid)} records to {CSV_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
