"""Export and erasure of one customer's data, and the retention job, on the writer's connection.

`FeedbackStore` calls these functions with its connection, so they run on the one thread
that owns it. Each writing function runs in one transaction: the rows are deleted or blanked
and the run is recorded together, or nothing changes.

Addresses are matched with `lower(customer_email) = lower(address)`. Ingest stores addresses
as email_validator normalised them, and the privacy requests normalise theirs the same way,
so case is the only difference left to ignore. Erasure and retention records keep the
SHA-256 of the lower-cased address, never the address.

Deleted rows draw no `change_seq`, so snapshot deltas cannot carry a deletion. The caller
asks the snapshot publisher for a full rewrite after every erasure or retention run that
changed rows (`SnapshotPublisher.request_rewrite`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from feedbackbot.errors import StoreError, StoreUnavailable
from models.privacy import ErasureResult, PrivacyExport, RetentionMode, RetentionResult, email_sha256

logger = logging.getLogger(__name__)

# Ids of the feedback rows of one address; the parameter is the lower-cased address.
ROWS_OF_ADDRESS = "SELECT id FROM feedback WHERE lower(customer_email) = ?"


def export_address(connection: duckdb.DuckDBPyConnection, path: Path, address: str) -> PrivacyExport:
    """Return every stored row about `address`: feedback, outbox, Idempotency-Keys and erasures."""
    lowered = address.lower()
    digest = email_sha256(address)
    try:
        connection.execute("BEGIN TRANSACTION")
        feedback = _dicts(connection, "SELECT * FROM feedback WHERE lower(customer_email) = ? ORDER BY received_at", [lowered])
        outbox = _dicts(
            connection,
            f"SELECT * FROM outbox WHERE feedback_id IN ({ROWS_OF_ADDRESS}) ORDER BY created_at",
            [lowered],
        )
        keys = _dicts(
            connection,
            f"SELECT * FROM idempotency_keys WHERE feedback_id IN ({ROWS_OF_ADDRESS}) ORDER BY created_at",
            [lowered],
        )
        erasures = _dicts(connection, "SELECT * FROM erasures WHERE email_sha256 = ? ORDER BY requested_at", [digest])
        connection.execute("COMMIT")
    except duckdb.Error as error:
        _rollback_quietly(connection)
        raise StoreError(f"Failed to export the data of one address from {path}: {error}. Try again.") from error

    return PrivacyExport(email_sha256=digest, feedback=feedback, outbox=outbox, idempotency_keys=keys, erasures=erasures)


def erase_address(
    connection: duckdb.DuckDBPyConnection,
    path: Path,
    address: str,
    *,
    reason: str,
    request_id: str,
    now: datetime,
) -> ErasureResult:
    """Delete the feedback rows of `address` with their outbox entries and keys, and record the erasure.

    An address with no rows still gets an erasure record with zero counts. Raises
    StoreUnavailable when the transaction fails, and then nothing is deleted.
    """
    lowered = address.lower()
    result_id = uuid.uuid4()
    try:
        connection.execute("BEGIN TRANSACTION")
        outbox = connection.execute(
            f"DELETE FROM outbox WHERE feedback_id IN ({ROWS_OF_ADDRESS}) RETURNING id", [lowered]
        ).fetchall()
        keys = connection.execute(
            f"DELETE FROM idempotency_keys WHERE feedback_id IN ({ROWS_OF_ADDRESS}) RETURNING idempotency_key",
            [lowered],
        ).fetchall()
        feedback = connection.execute(
            "DELETE FROM feedback WHERE lower(customer_email) = ? RETURNING id", [lowered]
        ).fetchall()
        result = ErasureResult(
            erasure_id=result_id,
            requested_at=now,
            email_sha256=email_sha256(address),
            feedback_rows=len(feedback),
            outbox_rows=len(outbox),
            idempotency_keys=len(keys),
            feedback_ids=[row[0] for row in feedback],
        )
        connection.execute(
            "INSERT INTO erasures (id, requested_at, request_id, email_sha256, reason, feedback_rows, "
            "outbox_rows, idempotency_keys) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                result.erasure_id,
                now,
                request_id,
                result.email_sha256,
                reason,
                result.feedback_rows,
                result.outbox_rows,
                result.idempotency_keys,
            ],
        )
        connection.execute("COMMIT")
    except duckdb.Error as error:
        _rollback_quietly(connection)
        raise StoreUnavailable(
            f"Failed to erase the data of one address in {path}: {error}. Nothing was deleted; send the request again."
        ) from error
    return result


def apply_retention(
    connection: duckdb.DuckDBPyConnection, path: Path, *, cutoff: datetime, mode: RetentionMode, now: datetime
) -> RetentionResult:
    """Delete or anonymise the feedback received before `cutoff`, and record the run.

    "delete" removes the rows with their outbox entries. "anonymise" sets customer_name,
    customer_email, feedback_text and enrichment_error to NULL and anonymised_at to `now`,
    keeping rating, sentiment and times. It deletes the rows' pending and dead outbox
    entries, because a send or a requeue needs the blanked fields and last_error can quote
    the address, and keeps the sent ones, whose last_error is NULL. Both modes delete the
    Idempotency-Keys that point at the rows. Raises StoreUnavailable when the transaction fails, and then
    nothing changes.
    """
    rows_before = "SELECT id FROM feedback WHERE received_at < ?"
    try:
        connection.execute("BEGIN TRANSACTION")
        keys = connection.execute(
            f"DELETE FROM idempotency_keys WHERE feedback_id IN ({rows_before}) RETURNING idempotency_key", [cutoff]
        ).fetchall()
        if mode == "delete":
            outbox = connection.execute(
                f"DELETE FROM outbox WHERE feedback_id IN ({rows_before}) RETURNING id", [cutoff]
            ).fetchall()
            feedback = connection.execute("DELETE FROM feedback WHERE received_at < ? RETURNING id", [cutoff]).fetchall()
        else:
            feedback = connection.execute(
                "UPDATE feedback SET customer_name = NULL, customer_email = NULL, feedback_text = NULL, "
                "enrichment_error = NULL, anonymised_at = ?, change_seq = nextval('change_seq') "
                "WHERE received_at < ? AND anonymised_at IS NULL RETURNING id",
                [now, cutoff],
            ).fetchall()
            outbox = connection.execute(
                f"DELETE FROM outbox WHERE status <> 'sent' AND feedback_id IN ({rows_before}) RETURNING id", [cutoff]
            ).fetchall()

        result = RetentionResult(
            run_id=uuid.uuid4(),
            ran_at=now,
            mode=mode,
            cutoff=cutoff,
            feedback_rows=len(feedback),
            outbox_rows=len(outbox),
            idempotency_keys=len(keys),
        )
        connection.execute(
            "INSERT INTO retention_runs (id, ran_at, mode, cutoff, feedback_rows, outbox_rows, idempotency_keys) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [result.run_id, now, mode, cutoff, result.feedback_rows, result.outbox_rows, result.idempotency_keys],
        )
        connection.execute("COMMIT")
    except duckdb.Error as error:
        _rollback_quietly(connection)
        raise StoreUnavailable(
            f"Failed to apply retention ({mode} before {cutoff.isoformat()}) in {path}: {error}. "
            "Nothing changed; the next run tries again."
        ) from error
    return result


def _dicts(connection: duckdb.DuckDBPyConnection, query: str, parameters: list[Any]) -> list[dict[str, Any]]:
    cursor = connection.execute(query, parameters)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _rollback_quietly(connection: duckdb.DuckDBPyConnection) -> None:
    try:
        connection.execute("ROLLBACK")
    except duckdb.Error as error:
        # No transaction is left to roll back when BEGIN itself failed.
        logger.warning("Rollback after a failed privacy operation also failed: %s", error)
