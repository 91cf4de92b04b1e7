"""The feedback table in DuckDB: schema, batched inserts and lookups.

DuckDB allows one writing process per database file, so only the persistence deployment
(one replica) opens a `FeedbackStore`. All SQL is parameterised. Every `duckdb.Error` is
raised again as `StoreError`, chained, with the path and the next step to try.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Sequence
from uuid import UUID

import duckdb

from feedbackbot.errors import StoreError, StoreUnavailable
from models.feedback import FeedbackRecord, IdempotencyClaim, StoreOutcome

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# CHECK constraints repeat the validation rules so that no other writer can store a row
# that the API would reject.
SCHEMA_STATEMENTS = (
    """
    CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feedback (
        id UUID PRIMARY KEY,
        received_at TIMESTAMPTZ NOT NULL,
        request_id VARCHAR NOT NULL,
        customer_name VARCHAR NOT NULL CHECK (length(customer_name) BETWEEN 1 AND 200),
        customer_email VARCHAR NOT NULL,
        feedback_text VARCHAR NOT NULL CHECK (length(feedback_text) BETWEEN 10 AND 5000),
        rating TINYINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
        sentiment_label VARCHAR NOT NULL
            CHECK (sentiment_label IN ('positive', 'neutral', 'negative')),
        sentiment_score DOUBLE NOT NULL CHECK (sentiment_score BETWEEN 0 AND 1),
        model_version VARCHAR NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS idempotency_keys (
        idempotency_key VARCHAR PRIMARY KEY,
        body_sha256 VARCHAR NOT NULL,
        feedback_id UUID NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    )
    """,
)

FEEDBACK_COLUMNS = (
    "id",
    "received_at",
    "request_id",
    "customer_name",
    "customer_email",
    "feedback_text",
    "rating",
    "sentiment_label",
    "sentiment_score",
    "model_version",
)


class FeedbackStore:
    """The one read-write connection to the feedback database."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, path: Path) -> None:
        self._connection = connection
        self.path = path

    @classmethod
    def open(cls, path: Path) -> "FeedbackStore":
        """Open or create the database at `path` and apply the schema."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"Failed to create the folder {path.parent} for the feedback database: {error}. "
                "Set db_path to a writable location."
            ) from error

        try:
            connection = duckdb.connect(str(path))
            connection.execute("SET TimeZone = 'UTC'")
            store = cls(connection, path)
            store._apply_schema()
        except duckdb.IOException as error:
            raise StoreUnavailable(
                f"Failed to open the feedback database {path}: {error}. If another process holds "
                "the file (a notebook, a second persistence replica), close it; read snapshots instead."
            ) from error
        except duckdb.Error as error:
            raise StoreError(f"Failed to prepare the feedback database {path}: {error}") from error

        return store

    def _apply_schema(self) -> None:
        self._connection.execute("BEGIN TRANSACTION")
        for statement in SCHEMA_STATEMENTS:
            self._connection.execute(statement)
        applied = self._connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if applied is None:
            self._connection.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        elif applied > SCHEMA_VERSION:
            self._connection.execute("ROLLBACK")
            raise StoreError(
                f"The database {self.path} has schema version {applied}, newer than this code's "
                f"{SCHEMA_VERSION}. Upgrade feedbackbot or point db_path at another file."
            )
        self._connection.execute("COMMIT")

    def insert_many(self, records: Sequence[FeedbackRecord]) -> None:
        """Insert all records in one transaction: every row is committed, or none is."""
        if not records:
            return

        try:
            self._connection.execute("BEGIN TRANSACTION")
            self._insert_rows(records)
            self._connection.execute("COMMIT")
        except duckdb.Error as error:
            self._rollback_quietly()
            raise StoreUnavailable(
                f"Failed to commit {len(records)} feedback rows to {self.path}: {error}. "
                "Nothing of this batch was stored; the client may retry."
            ) from error

    def _insert_rows(self, records: Sequence[FeedbackRecord]) -> None:
        if not records:
            return
        placeholders = "(" + ", ".join("?" for _ in FEEDBACK_COLUMNS) + ")"
        statement = (
            f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES "
            + ", ".join(placeholders for _ in records)
        )
        self._connection.execute(statement, [value for record in records for value in _row(record)])

    def commit_submissions(
        self,
        items: Sequence[tuple[FeedbackRecord, IdempotencyClaim | None]],
        *,
        now: datetime,
        idempotency_window_s: float,
    ) -> list[StoreOutcome]:
        """Store a batch in one transaction, honouring each Idempotency-Key.

        A key seen within the window returns the original row ("replayed") when the
        submission matches and stores nothing ("conflict") when it differs; otherwise the row
        and its key are stored ("created"). Two items of one batch with one key behave the
        same way. Raises StoreUnavailable when the transaction fails, and then nothing is stored.
        """
        cutoff = now - timedelta(seconds=idempotency_window_s)
        outcomes: list[StoreOutcome] = []
        fresh: list[FeedbackRecord] = []
        claimed_in_batch: dict[str, tuple[str, FeedbackRecord]] = {}

        try:
            self._connection.execute("BEGIN TRANSACTION")
            for record, claim in items:
                if claim is None:
                    fresh.append(record)
                    outcomes.append(StoreOutcome(status="created", record=record))
                    continue

                earlier = claimed_in_batch.get(claim.key) or self._claimed(claim.key, cutoff)
                if earlier is not None:
                    earlier_sha256, original = earlier
                    status = "replayed" if earlier_sha256 == claim.body_sha256 else "conflict"
                    outcomes.append(StoreOutcome(status=status, record=original if status == "replayed" else None))
                    continue

                self._connection.execute("DELETE FROM idempotency_keys WHERE idempotency_key = ?", [claim.key])
                self._connection.execute(
                    "INSERT INTO idempotency_keys (idempotency_key, body_sha256, feedback_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    [claim.key, claim.body_sha256, record.id, now],
                )
                claimed_in_batch[claim.key] = (claim.body_sha256, record)
                fresh.append(record)
                outcomes.append(StoreOutcome(status="created", record=record))

            self._insert_rows(fresh)
            self._connection.execute("COMMIT")
        except duckdb.Error as error:
            self._rollback_quietly()
            raise StoreUnavailable(
                f"Failed to commit {len(items)} feedback rows to {self.path}: {error}. "
                "Nothing of this batch was stored; the client may retry."
            ) from error

        return outcomes

    def find_claim(self, claim: IdempotencyClaim, *, now: datetime, idempotency_window_s: float) -> StoreOutcome | None:
        """Return the outcome of an earlier use of this key within the window, or None."""
        cutoff = now - timedelta(seconds=idempotency_window_s)
        try:
            earlier = self._claimed(claim.key, cutoff)
        except duckdb.Error as error:
            raise StoreError(f"Failed to look up an Idempotency-Key in {self.path}: {error}") from error

        if earlier is None:
            return None
        earlier_sha256, original = earlier
        if earlier_sha256 == claim.body_sha256:
            return StoreOutcome(status="replayed", record=original)
        return StoreOutcome(status="conflict")

    def purge_idempotency_keys(self, *, older_than: datetime) -> int:
        """Delete keys created before `older_than` and return how many were deleted."""
        try:
            deleted = self._connection.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ? RETURNING idempotency_key", [older_than]
            ).fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to purge expired Idempotency-Keys in {self.path}: {error}") from error
        return len(deleted)

    def _claimed(self, key: str, cutoff: datetime) -> tuple[str, FeedbackRecord] | None:
        row = self._connection.execute(
            "SELECT body_sha256, feedback_id FROM idempotency_keys WHERE idempotency_key = ? AND created_at > ?",
            [key, cutoff],
        ).fetchone()
        if row is None:
            return None
        original = self.get(row[1])
        if original is None:
            raise StoreError(f"Idempotency-Key points to feedback {row[1]}, which is missing from {self.path}.")
        return row[0], original

    def _rollback_quietly(self) -> None:
        try:
            self._connection.execute("ROLLBACK")
        except duckdb.Error as error:
            # No open transaction is left to roll back when BEGIN itself failed.
            logger.warning("Rollback after a failed insert also failed: %s", error)

    def get(self, feedback_id: UUID) -> FeedbackRecord | None:
        """Return the stored feedback with this id, or None."""
        try:
            row = self._connection.execute(
                f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE id = ?", [feedback_id]
            ).fetchone()
        except duckdb.Error as error:
            raise StoreError(f"Failed to read feedback {feedback_id} from {self.path}: {error}") from error

        if row is None:
            return None
        return FeedbackRecord(**dict(zip(FEEDBACK_COLUMNS, row)))

    def count(self) -> int:
        """Return the number of stored feedback rows."""
        try:
            return self._connection.execute("SELECT count(*) FROM feedback").fetchone()[0]
        except duckdb.Error as error:
            raise StoreError(f"Failed to count feedback rows in {self.path}: {error}") from error

    def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be opened and rolled back."""
        try:
            self._connection.execute("BEGIN TRANSACTION")
            self._connection.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
            self._connection.execute("ROLLBACK")
        except duckdb.Error as error:
            self._rollback_quietly()
            raise StoreUnavailable(f"The feedback database {self.path} is not writable: {error}") from error

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self._connection.close()


def _row(record: FeedbackRecord) -> Iterable[object]:
    return (
        record.id,
        record.received_at,
        record.request_id,
        record.customer_name,
        record.customer_email,
        record.feedback_text,
        record.rating,
        record.sentiment_label,
        record.sentiment_score,
        record.model_version,
    )
