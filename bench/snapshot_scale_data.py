"""Synthetic feedback and outbox rows for `bench.snapshot_scale`, generated in DuckDB SQL.

The words, names and email addresses come from the hand-written samples in
datasets/feedback_samples.csv. Each row's random choices are `hash(key)` scaled to [0, 1),
with a key made of the row number and a salt, so two runs with the same row count insert
the same rows. Ids are `md5(...)::UUID`, as incompressible as the service's uuid4 ids.

The shape of the data:

- `received_at` spreads evenly over `SPAN_DAYS` days from `START`, in row order, so
  `change_seq` grows with time as it does in the service.
- Ratings follow a J-shaped distribution (`RATING_SHARES`). The sentiment label matches the
  rating (1-2 negative, 3 neutral, 4-5 positive) for `LABEL_AGREEMENT` of the rows and is
  drawn at random otherwise. Scores are full-precision doubles in a band per label.
- `MISSING_SENTIMENT_SHARE` of the rows have no sentiment. Those before the last
  `PENDING_ROWS` rows gave up after `ENRICHMENT_MAX_ATTEMPTS` tries, and newer ones are pending.
- A text is 20 to 400 characters long, uniformly, and made of words drawn independently
  from all words of the samples with the same sentiment group of ratings, so each word is
  as frequent as in those samples. The word order is random. The report compares how well
  these texts and the samples compress.
- The outbox has a confirmation for each row and an admin alert for each row with rating
  1-2 or a negative label. The entries of the last `PENDING_ROWS` rows are pending. Older
  ones are sent, apart from a share of `DEAD_SHARE` that are dead.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from feedbackbot.settings import EnrichmentRetrySettings, NotifySettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_PATH = PROJECT_ROOT / "datasets" / "feedback_samples.csv"

START = datetime(2026, 2, 1, tzinfo=timezone.utc)
SPAN_DAYS = 90
RATING_SHARES = {1: 0.14, 2: 0.08, 3: 0.12, 4: 0.24, 5: 0.42}
LABEL_AGREEMENT = 0.8
MISSING_SENTIMENT_SHARE = 0.01
ENRICHMENT_MAX_ATTEMPTS = EnrichmentRetrySettings().enrichment_max_attempts
NOTIFY_MAX_ATTEMPTS = NotifySettings().notify_max_attempts
PENDING_ROWS = 5_000
DEAD_SHARE = 0.003
ADMIN_TARGET = "admin-3f9c2a71b0de"
# Versions in the builtin model's format. The model changes halfway through the period.
MODEL_VERSIONS = ("all-minilm-l6-v2+head-5d1c0a9e3b72", "all-minilm-l6-v2+head-a84f61c2d09e")
LABELS = ("negative", "neutral", "positive")
# Lower ends of the score bands, each 0.32 wide: 0.02-0.34, 0.34-0.66 and 0.66-0.98.
SCORE_BAND_LOW = (0.02, 0.34, 0.66)
SCORE_BAND_WIDTH = 0.32

# A key is row * KEY_STRIDE plus a salt below WORD_SALT for the row's own draws, or plus
# WORD_SALT + k for its k-th word. A text has at most 400 // 4 + 2 = 102 words.
KEY_STRIDE = 256
WORD_SALT = 64

_SETUP_SQL = (
    f"CREATE OR REPLACE TEMP MACRO bench_draw(row_number, salt) AS "
    f"hash(row_number * {KEY_STRIDE} + salt) / 18446744073709551616.0",
)

# Placeholders in braces are list literals from `Vocabulary`. The lambda reads constant
# lists because a list column in their place made generation 3 times slower (duckdb 2.0.0).
_ROWS_SQL = """
CREATE OR REPLACE TEMP TABLE bench_rows AS
WITH drawn AS (
    SELECT
        i,
        $start + to_microseconds(CAST((i + bench_draw(i, 1)) * $row_spacing_us AS BIGINT)) AS received_at,
        bench_draw(i, 2) AS rating_draw,
        bench_draw(i, 3) AS agreement_draw,
        bench_draw(i, 4) AS label_draw,
        bench_draw(i, 5) AS score_draw,
        bench_draw(i, 6) < $missing_share AS unscored,
        20 + CAST(floor(381 * bench_draw(i, 7)) AS BIGINT) AS text_length,
        1 + CAST(floor(bench_draw(i, 8) * {first_count}) AS BIGINT) AS first_index,
        1 + CAST(floor(bench_draw(i, 9) * {last_count}) AS BIGINT) AS last_index,
        1 + CAST(floor(bench_draw(i, 10) * {local_count}) AS BIGINT) AS local_index,
        1 + CAST(floor(bench_draw(i, 11) * {domain_count}) AS BIGINT) AS domain_index,
        bench_draw(i, 12) AS email_number_draw
    FROM range($first_row, $end_row) AS r(i)
),
rated AS (
    SELECT
        *,
        CASE
            WHEN rating_draw < $rating_1 THEN 1
            WHEN rating_draw < $rating_2 THEN 2
            WHEN rating_draw < $rating_3 THEN 3
            WHEN rating_draw < $rating_4 THEN 4
            ELSE 5
        END AS rating
    FROM drawn
),
labelled AS (
    SELECT
        *,
        -- 1 negative, 2 neutral, 3 positive: the position in LABELS.
        CASE
            WHEN agreement_draw >= $label_agreement THEN 1 + CAST(floor(label_draw * 3) AS BIGINT)
            WHEN rating <= 2 THEN 1
            WHEN rating = 3 THEN 2
            ELSE 3
        END AS label_index,
        CASE WHEN rating <= 2 THEN 1 WHEN rating = 3 THEN 2 ELSE 3 END AS word_group
    FROM rated
),
written AS (
    SELECT
        *,
        rtrim(left(array_to_string(list_transform(
            range(text_length // 4 + 2),
            lambda k: CASE word_group
                WHEN 1 THEN {negative_words}[1 + CAST(hash(i * {stride} + {word_salt} + k) % {negative_count} AS BIGINT)]
                WHEN 2 THEN {neutral_words}[1 + CAST(hash(i * {stride} + {word_salt} + k) % {neutral_count} AS BIGINT)]
                ELSE {positive_words}[1 + CAST(hash(i * {stride} + {word_salt} + k) % {positive_count} AS BIGINT)]
            END
        ), ' '), text_length)) AS words
    FROM labelled
)
SELECT
    i,
    CAST(md5('feedback-' || i) AS UUID) AS id,
    received_at,
    md5('request-' || i) AS request_id,
    {first_names}[first_index] || ' ' || {last_names}[last_index] AS customer_name,
    {email_locals}[local_index]
        || CASE
            WHEN email_number_draw < 0.3 THEN ''
            ELSE CAST(CAST(floor(email_number_draw * 100000) AS BIGINT) AS VARCHAR)
        END
        || '@' || {email_domains}[domain_index] AS customer_email,
    words AS feedback_text,
    CAST(rating AS TINYINT) AS rating,
    CASE WHEN NOT unscored THEN {labels}[label_index] END AS sentiment_label,
    CASE WHEN NOT unscored THEN {score_low}[label_index] + {score_width} * score_draw END AS sentiment_score,
    CASE WHEN NOT unscored THEN {model_versions}[CASE WHEN received_at < $model_switch THEN 1 ELSE 2 END] END
        AS model_version,
    received_at + to_microseconds(5000 + CAST(bench_draw(i, 13) * 195000 AS BIGINT)) AS stored_at,
    CASE
        WHEN NOT unscored THEN 0
        WHEN i < $pending_from THEN $max_attempts
        ELSE CAST(floor(bench_draw(i, 14) * 4) AS INTEGER)
    END AS enrichment_attempts,
    CASE
        WHEN NOT unscored THEN NULL
        WHEN i < $pending_from OR bench_draw(i, 14) >= 0.25 THEN 'enrichment timed out after 5 s'
    END AS enrichment_error
FROM written
"""

_INSERT_FEEDBACK_SQL = """
INSERT INTO feedback (
    id, received_at, request_id, customer_name, customer_email, feedback_text, rating,
    sentiment_label, sentiment_score, model_version, stored_at, enrichment_attempts, enrichment_error
)
SELECT
    id, received_at, request_id, customer_name, customer_email, feedback_text, rating,
    sentiment_label, sentiment_score, model_version, stored_at, enrichment_attempts, enrichment_error
FROM bench_rows
ORDER BY i
"""

# `status_draw` decides between sent and dead, but the entries of the newest rows stay pending.
_INSERT_OUTBOX_SQL = """
INSERT INTO outbox (
    id, feedback_id, kind, target, status, attempts, next_attempt_at, last_error, created_at, sent_at
)
WITH owed AS (
    SELECT
        i, CAST(md5('confirmation-' || i) AS UUID) AS id, id AS feedback_id, 'confirmation' AS kind,
        'customer' AS target, bench_draw(i, 21) AS status_draw, stored_at AS created_at,
        'SMTP 550 mailbox unavailable' AS dead_error
    FROM bench_rows
    UNION ALL
    SELECT
        i, CAST(md5('alert-' || i) AS UUID), id, 'admin_alert', $admin_target, bench_draw(i, 22), stored_at,
        'HTTP 503 from https://hooks.example.com'
    FROM bench_rows
    WHERE rating <= 2 OR sentiment_label = 'negative'
)
SELECT
    id,
    feedback_id,
    kind,
    target,
    CASE WHEN i >= $pending_from THEN 'pending' WHEN status_draw < $dead_share THEN 'dead' ELSE 'sent' END,
    CASE
        WHEN i >= $pending_from THEN 0
        WHEN status_draw < $dead_share THEN $notify_max_attempts
        WHEN status_draw < 0.02 THEN 2
        ELSE 1
    END,
    created_at + INTERVAL 60 SECOND,
    CASE WHEN i < $pending_from AND status_draw < $dead_share THEN dead_error END,
    created_at,
    CASE
        WHEN i < $pending_from AND status_draw >= $dead_share
            THEN created_at + to_microseconds(200000 + CAST(status_draw * 3000000 AS BIGINT))
    END
FROM owed
ORDER BY i, kind
"""


@dataclass(frozen=True)
class Vocabulary:
    """Words by sentiment group, name parts and email parts, taken from the sample file."""

    words: dict[str, tuple[str, ...]]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    email_locals: tuple[str, ...]
    email_domains: tuple[str, ...]
    sample_texts: tuple[str, ...]


def load_vocabulary(path: Path = SAMPLES_PATH) -> Vocabulary:
    """Read the hand-written samples and split them into word lists and name and email parts.

    Raises ValueError when the file is missing, has other columns or lacks a sentiment group.
    """
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            samples = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(
            f"Failed to read the feedback samples {path}: {error}. The benchmark draws its words from "
            "this file, so restore it from git."
        ) from error

    expected = {"customer_name", "customer_email", "feedback_text", "rating"}
    if not samples or set(samples[0]) != expected:
        raise ValueError(f"{path} is empty or lacks the columns {', '.join(sorted(expected))}.")

    words: dict[str, list[str]] = {label: [] for label in LABELS}
    first_names: set[str] = set()
    last_names: set[str] = set()
    email_locals: set[str] = set()
    email_domains: set[str] = set()
    for sample in samples:
        words[_expected_label(int(sample["rating"]))].extend(sample["feedback_text"].split())

        name_parts = sample["customer_name"].split(maxsplit=1)
        first_names.add(name_parts[0])
        if len(name_parts) == 2:
            last_names.add(name_parts[1])

        local, _, domain = sample["customer_email"].rpartition("@")
        email_locals.add(local)
        email_domains.add(domain)

    empty = [label for label, group in words.items() if not group]
    if empty:
        raise ValueError(f"{path} has no sample with a rating for the sentiment group(s) {', '.join(empty)}.")

    return Vocabulary(
        words={label: tuple(group) for label, group in words.items()},
        first_names=tuple(sorted(first_names)),
        last_names=tuple(sorted(last_names)),
        email_locals=tuple(sorted(email_locals)),
        email_domains=tuple(sorted(email_domains)),
        sample_texts=tuple(sample["feedback_text"] for sample in samples),
    )


class RowGenerator:
    """Generator of synthetic rows through one DuckDB connection. Create one per connection."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, vocabulary: Vocabulary, *, planned_rows: int) -> None:
        """Create the helper macro and build the SQL.

        `planned_rows` rows fill the `SPAN_DAYS` days, so it sets the time between two rows.
        Rows beyond it continue at the same pace.
        """
        self._connection = connection
        self._planned_rows = planned_rows
        for statement in _SETUP_SQL:
            connection.execute(statement)
        self._rows_sql = _ROWS_SQL.format(
            stride=KEY_STRIDE,
            word_salt=WORD_SALT,
            negative_words=_sql_list(vocabulary.words["negative"]),
            negative_count=len(vocabulary.words["negative"]),
            neutral_words=_sql_list(vocabulary.words["neutral"]),
            neutral_count=len(vocabulary.words["neutral"]),
            positive_words=_sql_list(vocabulary.words["positive"]),
            positive_count=len(vocabulary.words["positive"]),
            first_names=_sql_list(vocabulary.first_names),
            first_count=len(vocabulary.first_names),
            last_names=_sql_list(vocabulary.last_names),
            last_count=len(vocabulary.last_names),
            email_locals=_sql_list(vocabulary.email_locals),
            local_count=len(vocabulary.email_locals),
            email_domains=_sql_list(vocabulary.email_domains),
            domain_count=len(vocabulary.email_domains),
            labels=_sql_list(LABELS),
            score_low=f"[{', '.join(str(low) for low in SCORE_BAND_LOW)}]",
            score_width=SCORE_BAND_WIDTH,
            model_versions=_sql_list(MODEL_VERSIONS),
        )

    def insert_rows(self, first_row: int, end_row: int, *, pending_from: int) -> None:
        """Insert rows `first_row` to `end_row - 1` into feedback and outbox, in one transaction.

        The outbox entries of rows at or after `pending_from` are pending, and so is the late
        scoring of those rows that have no sentiment.
        """
        thresholds = []
        share = 0.0
        for rating in (1, 2, 3, 4):
            share += RATING_SHARES[rating]
            thresholds.append(share)

        span = timedelta(days=SPAN_DAYS)
        row_parameters = {
            "start": START,
            "row_spacing_us": span / timedelta(microseconds=1) / max(self._planned_rows, 1),
            "missing_share": MISSING_SENTIMENT_SHARE,
            "first_row": first_row,
            "end_row": end_row,
            "rating_1": thresholds[0],
            "rating_2": thresholds[1],
            "rating_3": thresholds[2],
            "rating_4": thresholds[3],
            "label_agreement": LABEL_AGREEMENT,
            "model_switch": START + span / 2,
            "pending_from": pending_from,
            "max_attempts": ENRICHMENT_MAX_ATTEMPTS,
        }
        outbox_parameters = {
            "admin_target": ADMIN_TARGET,
            "pending_from": pending_from,
            "dead_share": DEAD_SHARE,
            "notify_max_attempts": NOTIFY_MAX_ATTEMPTS,
        }

        self._connection.execute("BEGIN TRANSACTION")
        try:
            self._connection.execute(self._rows_sql, row_parameters)
            self._connection.execute(_INSERT_FEEDBACK_SQL)
            self._connection.execute(_INSERT_OUTBOX_SQL, outbox_parameters)
            self._connection.execute("DROP TABLE bench_rows")
            self._connection.execute("COMMIT")
        except duckdb.Error:
            self._connection.execute("ROLLBACK")
            raise


def send_pending(connection: duckdb.DuckDBPyConnection, limit: int) -> int:
    """Mark the `limit` oldest pending outbox entries as sent, as a sender would, and return the count."""
    rows = connection.execute(
        "UPDATE outbox SET status = 'sent', attempts = attempts + 1, last_error = NULL, sent_at = next_attempt_at, "
        "change_seq = nextval('change_seq') WHERE id IN ("
        "SELECT id FROM outbox WHERE status = 'pending' ORDER BY created_at LIMIT ?) RETURNING id",
        [limit],
    ).fetchall()
    return len(rows)


def score_pending(connection: duckdb.DuckDBPyConnection, limit: int) -> int:
    """Give the `limit` oldest rows that wait for late scoring a sentiment, and return the count."""
    rows = connection.execute(
        """
        UPDATE feedback SET
            sentiment_label = CASE WHEN rating <= 2 THEN 'negative' WHEN rating = 3 THEN 'neutral' ELSE 'positive' END,
            sentiment_score = CASE WHEN rating <= 2 THEN 0.1 WHEN rating = 3 THEN 0.5 ELSE 0.9 END
                + 0.08 * (hash(id) / 18446744073709551616.0),
            model_version = ?,
            enrichment_attempts = enrichment_attempts + 1,
            enrichment_error = NULL,
            change_seq = nextval('change_seq')
        WHERE id IN (
            SELECT id FROM feedback WHERE sentiment_label IS NULL AND enrichment_attempts < ?
            ORDER BY received_at LIMIT ?
        )
        RETURNING id
        """,
        [MODEL_VERSIONS[-1], ENRICHMENT_MAX_ATTEMPTS, limit],
    ).fetchall()
    return len(rows)


def requeue_dead(connection: duckdb.DuckDBPyConnection, limit: int) -> int:
    """Make `limit` dead outbox entries from across the whole period pending again, and return the count.

    The entries are chosen by a hash of their id, so they lie in row groups of every age.
    """
    rows = connection.execute(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = current_timestamp, "
        "change_seq = nextval('change_seq') WHERE id IN ("
        "SELECT id FROM outbox WHERE status = 'dead' ORDER BY hash(id) LIMIT ?) RETURNING id",
        [limit],
    ).fetchall()
    return len(rows)


def _expected_label(rating: int) -> str:
    if rating <= 2:
        return "negative"
    return "neutral" if rating == 3 else "positive"


def _sql_list(values: tuple[str, ...]) -> str:
    """Return a DuckDB list literal of strings, with each single quote doubled as SQL requires."""
    quoted = ("'" + value.replace("'", "''") + "'" for value in values)
    return "[" + ", ".join(quoted) + "]"
