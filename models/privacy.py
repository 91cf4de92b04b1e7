"""Contracts of the privacy routes and jobs: export and erasure by email address, and retention.

Request bodies come from the admin routes under /v1/admin/privacy/. The address arrives in a
JSON body rather than the query string, because proxies and access logs record query strings.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import email_validator
from pydantic import BaseModel, ConfigDict, Field, field_validator

REASON_MAX_CHARS = 500
DEFAULT_ERASURE_REASON = "data subject request"

RetentionMode = Literal["delete", "anonymise"]


def email_sha256(address: str) -> str:
    """Return the hex SHA-256 of a normalised, lower-cased address, as stored in erasure records."""
    return hashlib.sha256(address.lower().encode("utf-8")).hexdigest()


class PrivacyRequest(BaseModel):
    """Body of POST /v1/admin/privacy/export: the customer's email address."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True, frozen=True)

    email: str = Field(
        description="The customer's email address. It is normalised like submitted addresses "
        "and matched without regard to letter case."
    )

    @field_validator("email")
    @classmethod
    def _normalise_email(cls, value: str) -> str:
        try:
            checked = email_validator.validate_email(value, check_deliverability=False)
        except email_validator.EmailNotValidError as error:
            raise ValueError(str(error)) from error
        # Submissions store an internationalised domain in its ASCII (xn--) form, so a request
        # matches them only in that form too.
        # NOTE: rows stored before that rule keep the Unicode form and are not matched.
        return checked.ascii_email or checked.normalized


class ErasureRequest(PrivacyRequest):
    """Body of POST /v1/admin/privacy/erase: the address and why its data is erased."""

    reason: str = Field(
        default=DEFAULT_ERASURE_REASON,
        min_length=1,
        max_length=REASON_MAX_CHARS,
        description="Why the data is erased, kept in the erasure record; never put the address itself here.",
    )


class ErasureResult(BaseModel):
    """Body of a 200 response to POST /v1/admin/privacy/erase: what one erasure deleted."""

    erasure_id: UUID = Field(description="Id of the row in the erasures table that records this erasure.")
    requested_at: datetime
    email_sha256: str = Field(description="SHA-256 of the lower-cased address; the address itself is not stored.")
    feedback_rows: int = Field(description="Feedback rows deleted.")
    outbox_rows: int = Field(description="Outbox entries of those rows deleted.")
    idempotency_keys: int = Field(description="Idempotency-Key records that pointed at those rows, deleted.")
    feedback_ids: list[UUID] = Field(description="Ids of the deleted feedback rows.")


class PrivacyExport(BaseModel):
    """Body of a 200 response to POST /v1/admin/privacy/export: everything stored about one address."""

    email_sha256: str = Field(description="SHA-256 of the lower-cased address, as erasure records store it.")
    feedback: list[dict[str, Any]] = Field(description="Every column of each feedback row with this address.")
    outbox: list[dict[str, Any]] = Field(description="Outbox entries of those feedback rows.")
    idempotency_keys: list[dict[str, Any]] = Field(description="Idempotency-Key records that point at those rows.")
    erasures: list[dict[str, Any]] = Field(description="Earlier erasures of this address.")


class RetentionResult(BaseModel):
    """Outcome of one retention run, as recorded in the retention_runs table."""

    run_id: UUID
    ran_at: datetime
    mode: RetentionMode
    cutoff: datetime = Field(description="Rows received before this time were deleted or anonymised.")
    feedback_rows: int = Field(description="Feedback rows deleted or anonymised.")
    outbox_rows: int = Field(description="Outbox entries deleted.")
    idempotency_keys: int = Field(description="Idempotency-Key records deleted.")

    @property
    def changed(self) -> bool:
        """Whether the run deleted or changed any row."""
        return bool(self.feedback_rows or self.outbox_rows or self.idempotency_keys)
