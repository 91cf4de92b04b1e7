"""The feedback table in DuckDB: schema, batched inserts and lookups.

DuckDB allows one writing process per database file, so only the persistence deployment
(one replica) opens a `FeedbackStore`. All SQL is parameterised. Every `duckdb.Error` is
raised again as `StoreError`, chained, with the path and the next step to try.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence
from uuid import UUID

import duckdb

from feedbackbot import privacy
from feedbackbot.errors import StoreError, StoreUnavailable
from models.privacy import ErasureResult, PrivacyExport, RetentionMode, RetentionResult
from models.listing import DailyVolume, FeedbackQuery
from models.feedback import (
    ClaimedNotification,
    DeliveryResult,
    FeedbackRecord,
    IdempotencyClaim,
    OutboxEntry,
    OwedNotification,
    StoreOutcome,
)

if TYPE_CHECKING:
    from feedbackbot.snapshots import PublishReport, SnapshotPublisher

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

# Version 1 of the schema. A new file gets it and then every migration below, so new and
# upgraded files always end in the same state. CHECK constraints repeat the validation
# rules so that no other writer can store a row that the API would reject.
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
    """
    CREATE TABLE IF NOT EXISTS outbox (
        id UUID PRIMARY KEY,
        feedback_id UUID NOT NULL,
        kind VARCHAR NOT NULL CHECK (kind IN ('confirmation', 'admin_alert')),
        target VARCHAR NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('pending', 'sent', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TIMESTAMPTZ NOT NULL,
        last_error VARCHAR,
        created_at TIMESTAMPTZ NOT NULL,
        sent_at TIMESTAMPTZ
    )
    """,
)

# Statements that bring a file from the version before each key to that version.
# Version 2: sentiment may be missing when enrichment failed, because it is filled in later.
# Every row also carries change_seq. It grows with each insert or update, so readers can
# copy what changed since they last looked.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "CREATE SEQUENCE IF NOT EXISTS change_seq",
        "ALTER TABLE feedback ALTER COLUMN sentiment_label DROP NOT NULL",
        "ALTER TABLE feedback ALTER COLUMN sentiment_score DROP NOT NULL",
        "ALTER TABLE feedback ALTER COLUMN model_version DROP NOT NULL",
        "ALTER TABLE feedback ADD COLUMN enrichment_attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE feedback ADD COLUMN enrichment_error VARCHAR",
        "ALTER TABLE feedback ADD COLUMN change_seq BIGINT DEFAULT nextval('change_seq')",
        "ALTER TABLE outbox ADD COLUMN change_seq BIGINT DEFAULT nextval('change_seq')",
    ),
    # Version 3: privacy. Retention in "anonymise" mode sets the personal fields to NULL,
    # which the length CHECKs accept. Erasures and retention runs are recorded with the
    # address's SHA-256, never the address.
    3: (
        "ALTER TABLE feedback ALTER COLUMN customer_name DROP NOT NULL",
        "ALTER TABLE feedback ALTER COLUMN customer_email DROP NOT NULL",
        "ALTER TABLE feedback ALTER COLUMN feedback_text DROP NOT NULL",
        "ALTER TABLE feedback ADD COLUMN anonymised_at TIMESTAMPTZ",
        """
        CREATE TABLE IF NOT EXISTS erasures (
            id UUID PRIMARY KEY,
            requested_at TIMESTAMPTZ NOT NULL,
            request_id VARCHAR NOT NULL,
            email_sha256 VARCHAR NOT NULL CHECK (length(email_sha256) = 64),
            reason VARCHAR NOT NULL,
            feedback_rows INTEGER NOT NULL,
            outbox_rows INTEGER NOT NULL,
            idempotency_keys INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS retention_runs (
            id UUID PRIMARY KEY,
            ran_at TIMESTAMPTZ NOT NULL,
            mode VARCHAR NOT NULL CHECK (mode IN ('delete', 'anonymise')),
            cutoff TIMESTAMPTZ NOT NULL,
            feedback_rows INTEGER NOT NULL,
            outbox_rows INTEGER NOT NULL,
            idempotency_keys INTEGER NOT NULL
        )
        """,
    ),
}

OUTBOX_COLUMNS = (
    "id",
    "feedback_id",
    "kind",
    "target",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "created_at",
    "sent_at",
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
                f"Failed to open the feedback database {path}: {error}. If another process has "
                "the file open (a notebook, a second persistence replica), close that process first."
            ) from error
        except duckdb.Error as error:
            raise StoreError(f"Failed to prepare the feedback database {path}: {error}") from error

        return store

    def _apply_schema(self) -> None:
        """Create the tables of version 1 when missing, then run each migration not yet applied.

        Everything runs in one transaction, so a failed migration leaves the file as it was.
        """
        self._connection.execute("BEGIN TRANSACTION")
        for statement in SCHEMA_STATEMENTS:
            self._connection.execute(statement)

        applied = self._connection.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if applied is None:
            self._connection.execute("INSERT INTO schema_version (version) VALUES (1)")
            applied = 1
        if applied > SCHEMA_VERSION:
            self._connection.execute("ROLLBACK")
            raise StoreError(
                f"The database {self.path} has schema version {applied}, newer than this code's "
                f"{SCHEMA_VERSION}. Upgrade feedbackbot or point db_path at another file."
            )

        for version in range(applied + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                self._connection.execute(statement)
            self._connection.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
            logger.info("Migrated the feedback database %s to schema version %d", self.path, version)
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

    def _claimed_many(self, keys: Sequence[str], cutoff: datetime) -> dict[str, tuple[str, FeedbackRecord]]:
        """Return the body hash and original row of each key used after `cutoff`, by key."""
        if not keys:
            return {}
        rows = self._connection.execute(
            "SELECT k.idempotency_key, k.body_sha256, k.feedback_id, f.id IS NOT NULL, "
            + ", ".join(f"f.{column}" for column in FEEDBACK_COLUMNS)
            + " FROM idempotency_keys k LEFT JOIN feedback f ON f.id = k.feedback_id "
            f"WHERE k.idempotency_key IN ({', '.join('?' for _ in keys)}) AND k.created_at > ?",
            [*keys, cutoff],
        ).fetchall()

        claims = {}
        for key, body_sha256, feedback_id, found, *columns in rows:
            if not found:
                raise StoreError(
                    f"Idempotency-Key {key!r} points to feedback {feedback_id}, which is missing from {self.path}. "
                    "Delete that row of idempotency_keys, or restore the feedback row from a backup."
                )
            claims[key] = (body_sha256, FeedbackRecord(**dict(zip(FEEDBACK_COLUMNS, columns))))
        return claims

    def _insert_keys(self, key_rows: Sequence[list[object]]) -> None:
        """Insert Idempotency-Key rows, replacing expired rows of the same keys."""
        if not key_rows:
            return
        keys = [row[0] for row in key_rows]
        self._connection.execute(
            f"DELETE FROM idempotency_keys WHERE idempotency_key IN ({', '.join('?' for _ in keys)})", keys
        )
        self._connection.execute(
            "INSERT INTO idempotency_keys (idempotency_key, body_sha256, feedback_id, created_at) VALUES "
            + ", ".join("(?, ?, ?, ?)" for _ in key_rows),
            [value for row in key_rows for value in row],
        )

    def _insert_outbox_rows(self, owed_rows: Sequence[list[object]]) -> None:
        if not owed_rows:
            return
        self._connection.execute(
            "INSERT INTO outbox (id, feedback_id, kind, target, status, attempts, next_attempt_at, created_at) VALUES "
            + ", ".join("(?, ?, ?, ?, 'pending', 0, ?, ?)" for _ in owed_rows),
            [value for row in owed_rows for value in row],
        )

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
        items: Sequence[tuple[FeedbackRecord, IdempotencyClaim | None, Sequence[OwedNotification]]],
        *,
        now: datetime,
        idempotency_window_s: float,
    ) -> list[StoreOutcome]:
        """Store a batch in one transaction with its outbox entries, honouring each Idempotency-Key.

        A key seen within the window returns the original row ("replayed") when the
        submission matches and stores nothing ("conflict") when it differs. Otherwise the row,
        its key and the notifications it owes are stored ("created"). Two items of one batch
        with one key behave the same way. Raises StoreUnavailable when the transaction fails,
        and then nothing is stored.
        """
        cutoff = now - timedelta(seconds=idempotency_window_s)
        outcomes: list[StoreOutcome] = []
        fresh: list[FeedbackRecord] = []
        owed_rows: list[list[object]] = []
        key_rows: list[list[object]] = []

        # Each statement costs DuckDB far more than a row, so the batch is stored with a
        # fixed number of statements: one lookup of all keys, then one insert per table.
        try:
            self._connection.execute("BEGIN TRANSACTION")
            keys = list(dict.fromkeys(claim.scoped_key for _, claim, _ in items if claim is not None))
            claims = self._claimed_many(keys, cutoff)
            for record, claim, owed in items:
                if claim is not None:
                    earlier = claims.get(claim.scoped_key)
                    if earlier is not None:
                        earlier_sha256, original = earlier
                        status = "replayed" if earlier_sha256 == claim.body_sha256 else "conflict"
                        outcomes.append(StoreOutcome(status=status, record=original if status == "replayed" else None))
                        continue
                    claims[claim.scoped_key] = (claim.body_sha256, record)
                    key_rows.append([claim.scoped_key, claim.body_sha256, record.id, now])

                fresh.append(record)
                owed_rows.extend(_outbox_row(record, notification, now) for notification in owed)
                outcomes.append(StoreOutcome(status="created", record=record))

            self._insert_keys(key_rows)
            self._insert_rows(fresh)
            self._insert_outbox_rows(owed_rows)
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
            earlier = self._claimed(claim.scoped_key, cutoff)
        except duckdb.Error as error:
            raise StoreError(f"Failed to look up an Idempotency-Key in {self.path}: {error}") from error

        if earlier is None:
            return None
        earlier_sha256, original = earlier
        if earlier_sha256 == claim.body_sha256:
            return StoreOutcome(status="replayed", record=original)
        return StoreOutcome(status="conflict")

    def find_claims(
        self, claims: Sequence[IdempotencyClaim], *, now: datetime, idempotency_window_s: float
    ) -> list[StoreOutcome | None]:
        """Return the outcome of an earlier use of each key within the window, or None, in order.

        One query looks up all keys, as `commit_submissions` does.
        """
        cutoff = now - timedelta(seconds=idempotency_window_s)
        try:
            earlier = self._claimed_many([claim.scoped_key for claim in claims], cutoff)
        except duckdb.Error as error:
            raise StoreError(
                f"Failed to look up {len(claims)} Idempotency-Keys in {self.path}: {error}. Retry the request."
            ) from error

        outcomes: list[StoreOutcome | None] = []
        for claim in claims:
            found = earlier.get(claim.scoped_key)
            if found is None:
                outcomes.append(None)
            elif found[0] == claim.body_sha256:
                outcomes.append(StoreOutcome(status="replayed", record=found[1]))
            else:
                outcomes.append(StoreOutcome(status="conflict"))
        return outcomes

    def purge_idempotency_keys(self, *, older_than: datetime) -> int:
        """Delete keys created before `older_than` and return how many were deleted."""
        try:
            deleted = self._connection.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ? RETURNING idempotency_key", [older_than]
            ).fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to purge expired Idempotency-Keys in {self.path}: {error}") from error
        return len(deleted)

    def claim_notifications(
        self, *, now: datetime, limit: int, lease_s: float, skip_targets: Sequence[str] = ()
    ) -> list[ClaimedNotification]:
        """Lease up to `limit` due outbox entries to the caller and return them with their feedback.

        A leased entry is not due again until `lease_s` has passed, so a sender that dies
        mid-send leaves its entries to be tried again after the lease. Entries for
        `skip_targets` are left alone. First tries go before retries, so that a target that
        keeps failing cannot starve new notifications to the others.
        """
        columns = ", ".join(OUTBOX_COLUMNS)
        try:
            self._connection.execute("BEGIN TRANSACTION")
            rows = self._connection.execute(
                f"UPDATE outbox SET next_attempt_at = ?, change_seq = nextval('change_seq') WHERE id IN ("
                "SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? "
                "AND NOT list_contains(?::VARCHAR[], target) "
                f"ORDER BY attempts > 0, next_attempt_at LIMIT ?) RETURNING {columns}",
                [now + timedelta(seconds=lease_s), now, list(skip_targets), limit],
            ).fetchall()
            entries = [OutboxEntry(**dict(zip(OUTBOX_COLUMNS, row))) for row in rows]
            records = self._get_many([entry.feedback_id for entry in entries])
            claimed = [
                ClaimedNotification(entry=entry, record=records[entry.feedback_id])
                for entry in entries
                if entry.feedback_id in records
            ]
            self._connection.execute("COMMIT")
        except duckdb.Error as error:
            self._rollback_quietly()
            raise StoreUnavailable(f"Failed to claim notifications in {self.path}: {error}") from error
        return claimed

    def finish_notifications(self, results: Sequence[DeliveryResult], *, now: datetime) -> None:
        """Record what senders did with claimed entries, in one transaction."""
        sent = [result.entry_id for result in results if result.outcome == "sent"]
        try:
            self._connection.execute("BEGIN TRANSACTION")
            if sent:
                # Most results are sends, so they share one statement.
                self._connection.execute(
                    "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, change_seq = nextval('change_seq'), "
                    f"last_error = NULL WHERE id IN ({', '.join('?' for _ in sent)}) AND status = 'pending'",
                    [now, *sent],
                )
            for result in results:
                if result.outcome == "sent":
                    continue
                if result.outcome == "dead":
                    self._connection.execute(
                        "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ?, change_seq = nextval('change_seq') "
                        "WHERE id = ? AND status = 'pending'",
                        [result.error, result.entry_id],
                    )
                elif result.outcome == "retry":
                    self._connection.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, change_seq = nextval('change_seq') "
                        "WHERE id = ? AND status = 'pending'",
                        [result.error, result.next_attempt_at, result.entry_id],
                    )
                else:
                    self._connection.execute(
                        "UPDATE outbox SET last_error = ?, next_attempt_at = ?, change_seq = nextval('change_seq') "
                        "WHERE id = ? AND status = 'pending'",
                        [result.error, result.next_attempt_at, result.entry_id],
                    )
            self._connection.execute("COMMIT")
        except duckdb.Error as error:
            self._rollback_quietly()
            raise StoreUnavailable(f"Failed to record {len(results)} notification results in {self.path}: {error}") from error

    def pending_enrichment(self, *, limit: int, max_attempts: int) -> list[FeedbackRecord]:
        """Return up to `limit` rows still without sentiment and tried fewer than `max_attempts` times, oldest first."""
        try:
            rows = self._connection.execute(
                f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback "
                # Anonymised rows have no text left to score.
                "WHERE sentiment_label IS NULL AND feedback_text IS NOT NULL AND enrichment_attempts < ? "
                "ORDER BY received_at LIMIT ?",
                [max_attempts, limit],
            ).fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to list feedback waiting for sentiment in {self.path}: {error}") from error
        return [FeedbackRecord(**dict(zip(FEEDBACK_COLUMNS, row))) for row in rows]

    def complete_enrichment(
        self, items: Sequence[tuple[FeedbackRecord, Sequence[OwedNotification]]], *, now: datetime
    ) -> int:
        """Store late sentiment, and the notifications it newly owes, in one transaction.

        Each item is a record with its sentiment filled in. A row that already has a
        sentiment is left alone, and then its notifications are not added either.
        Returns the number of rows updated.
        """
        updated = 0
        try:
            self._connection.execute("BEGIN TRANSACTION")
            for record, owed in items:
                changed = self._connection.execute(
                    "UPDATE feedback SET sentiment_label = ?, sentiment_score = ?, model_version = ?, "
                    "enrichment_attempts = enrichment_attempts + 1, enrichment_error = NULL, "
                    "change_seq = nextval('change_seq') WHERE id = ? AND sentiment_label IS NULL RETURNING id",
                    [record.sentiment_label, record.sentiment_score, record.model_version, record.id],
                ).fetchall()
                if not changed:
                    continue
                updated += 1
                if owed:
                    self._connection.executemany(
                        "INSERT INTO outbox (id, feedback_id, kind, target, status, attempts, next_attempt_at, "
                        "created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
                        [_outbox_row(record, notification, now) for notification in owed],
                    )
            self._connection.execute("COMMIT")
        except duckdb.Error as error:
            self._rollback_quietly()
            raise StoreUnavailable(
                f"Failed to store the sentiment of {len(items)} feedback rows in {self.path}: {error}. "
                "The rows stay pending and are tried again."
            ) from error
        return updated

    def record_enrichment_failure(self, feedback_ids: Sequence[UUID], *, error_text: str) -> None:
        """Count one more failed try to score each of these rows and keep the error."""
        try:
            self._connection.executemany(
                "UPDATE feedback SET enrichment_attempts = enrichment_attempts + 1, enrichment_error = ?, "
                "change_seq = nextval('change_seq') WHERE id = ? AND sentiment_label IS NULL",
                [[error_text, feedback_id] for feedback_id in feedback_ids],
            )
        except duckdb.Error as error:
            raise StoreError(f"Failed to record an enrichment failure in {self.path}: {error}") from error

    def enrichment_counts(self, *, max_attempts: int) -> dict[str, int]:
        """Return how many rows wait for sentiment ("pending") and how many ran out of tries ("given_up")."""
        try:
            pending, given_up = self._connection.execute(
                "SELECT count(*) FILTER (WHERE enrichment_attempts < ?), count(*) FILTER (WHERE enrichment_attempts >= ?) "
                "FROM feedback WHERE sentiment_label IS NULL AND feedback_text IS NOT NULL",
                [max_attempts, max_attempts],
            ).fetchone()
        except duckdb.Error as error:
            raise StoreError(f"Failed to count feedback waiting for sentiment in {self.path}: {error}") from error
        return {"pending": pending, "given_up": given_up}

    def list_outbox(self, *, status: str, limit: int) -> list[OutboxEntry]:
        """Return up to `limit` outbox entries with this status, newest first, so that a
        long history of dead entries cannot hide the latest ones."""
        try:
            rows = self._connection.execute(
                f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox WHERE status = ? ORDER BY created_at DESC LIMIT ?",
                [status, limit],
            ).fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to list {status} outbox entries in {self.path}: {error}") from error
        return [OutboxEntry(**dict(zip(OUTBOX_COLUMNS, row))) for row in rows]

    def list_feedback(self, query: FeedbackQuery) -> list[FeedbackRecord]:
        """Return up to `query.limit` rows that match the filters, newest first."""
        where, parameters = _feedback_conditions(query)
        try:
            rows = self._connection.execute(
                f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback {where} ORDER BY received_at DESC, id LIMIT ?",
                [*parameters, query.limit],
            ).fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to list feedback in {self.path}: {error}") from error
        return [FeedbackRecord(**dict(zip(FEEDBACK_COLUMNS, row))) for row in rows]

    def daily_volume(self, query: FeedbackQuery) -> list[DailyVolume]:
        """Count the rows that match the filters per UTC day and sentiment, oldest day first; ignores `limit`."""
        where, parameters = _feedback_conditions(query)
        try:
            rows = self._connection.execute(
                "SELECT CAST(received_at AS DATE) AS day, count(*), "
                "count(*) FILTER (WHERE sentiment_label = 'positive'), "
                "count(*) FILTER (WHERE sentiment_label = 'neutral'), "
                "count(*) FILTER (WHERE sentiment_label = 'negative'), "
                "count(*) FILTER (WHERE sentiment_label IS NULL) "
                f"FROM feedback {where} GROUP BY day ORDER BY day",
                parameters,
            ).fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to count feedback per day in {self.path}: {error}") from error
        names = ("day", "total", "positive", "neutral", "negative", "pending")
        return [DailyVolume(**dict(zip(names, row))) for row in rows]

    def requeue_notification(self, entry_id: UUID, *, now: datetime) -> OutboxEntry | None:
        """Make a dead entry pending again with a fresh count of tries; None when it is not dead."""
        try:
            row = self._connection.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?, change_seq = nextval('change_seq') "
                f"WHERE id = ? AND status = 'dead' RETURNING {', '.join(OUTBOX_COLUMNS)}",
                [now, entry_id],
            ).fetchone()
        except duckdb.Error as error:
            raise StoreError(f"Failed to requeue outbox entry {entry_id} in {self.path}: {error}") from error
        return OutboxEntry(**dict(zip(OUTBOX_COLUMNS, row))) if row else None

    def outbox_counts(self) -> dict[str, int]:
        """Return the number of outbox entries by status."""
        try:
            rows = self._connection.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        except duckdb.Error as error:
            raise StoreError(f"Failed to count outbox entries in {self.path}: {error}") from error
        counts = {"pending": 0, "sent": 0, "dead": 0}
        counts.update({status: count for status, count in rows})
        return counts

    def _claimed(self, key: str, cutoff: datetime) -> tuple[str, FeedbackRecord] | None:
        row = self._connection.execute(
            "SELECT body_sha256, feedback_id FROM idempotency_keys WHERE idempotency_key = ? AND created_at > ?",
            [key, cutoff],
        ).fetchone()
        if row is None:
            return None
        original = self.get(row[1])
        if original is None:
            raise StoreError(
                f"Idempotency-Key {key!r} points to feedback {row[1]}, which is missing from {self.path}. "
                "Delete that row of idempotency_keys, or restore the feedback row from a backup."
            )
        return row[0], original

    def _rollback_quietly(self) -> None:
        try:
            self._connection.execute("ROLLBACK")
        except duckdb.Error as error:
            # No open transaction is left to roll back when BEGIN itself failed.
            logger.warning("Rollback after a failed insert also failed: %s", error)

    def _get_many(self, feedback_ids: Sequence[UUID]) -> dict[UUID, FeedbackRecord]:
        if not feedback_ids:
            return {}
        unique = list(dict.fromkeys(feedback_ids))
        rows = self._connection.execute(
            f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE id IN ({', '.join('?' for _ in unique)})", unique
        ).fetchall()
        records = [FeedbackRecord(**dict(zip(FEEDBACK_COLUMNS, row))) for row in rows]
        return {record.id: record for record in records}

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

    def export_address(self, address: str) -> PrivacyExport:
        """Return every stored row about one email address; see feedbackbot.privacy."""
        return privacy.export_address(self._connection, self.path, address)

    def erase_address(self, address: str, *, reason: str, request_id: str, now: datetime) -> ErasureResult:
        """Delete one email address's rows in one transaction and record the erasure; see feedbackbot.privacy."""
        return privacy.erase_address(self._connection, self.path, address, reason=reason, request_id=request_id, now=now)

    def apply_retention(self, *, cutoff: datetime, mode: RetentionMode, now: datetime) -> RetentionResult:
        """Delete or anonymise the feedback received before `cutoff` and record the run; see feedbackbot.privacy."""
        return privacy.apply_retention(self._connection, self.path, cutoff=cutoff, mode=mode, now=now)

    def publish_snapshot(self, publisher: "SnapshotPublisher") -> "PublishReport":
        """Publish what changed since the last snapshot; call it between transactions, on this store's thread."""
        return publisher.publish(self._connection)

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self._connection.close()


def _feedback_conditions(query: FeedbackQuery) -> tuple[str, list[object]]:
    """Return the WHERE clause of a listing's filters and its parameters."""
    conditions: list[str] = []
    parameters: list[object] = []
    if query.rating is not None:
        conditions.append("rating = ?")
        parameters.append(query.rating)
    if query.sentiment == "pending":
        conditions.append("sentiment_label IS NULL")
    elif query.sentiment is not None:
        conditions.append("sentiment_label = ?")
        parameters.append(query.sentiment)
    if query.since is not None:
        conditions.append("received_at >= ?")
        parameters.append(query.since)
    if query.until is not None:
        conditions.append("received_at < ?")
        parameters.append(query.until)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return where, parameters


def _outbox_row(record: FeedbackRecord, notification: OwedNotification, now: datetime) -> list[object]:
    return [uuid.uuid4(), record.id, notification.kind, notification.target, now, now]


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
