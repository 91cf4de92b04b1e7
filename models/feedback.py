"""Pydantic contracts that travel between the deployments of the feedback graph.

The request flows ingest -> validation -> enrichment -> persistence -> notification:
`validate_submission` turns a raw payload into a `FeedbackSubmission` or a list of
`FieldError`s, enrichment adds a `Sentiment`, persistence stores a `FeedbackRecord`, and
ingest responds with `FeedbackCreated` or an `ErrorResponse`.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import email_validator
from apprise.utils.parse import is_email as apprise_parse_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

NAME_MAX_CHARS = 200
TEXT_MIN_CHARS = 10
TEXT_MAX_CHARS = 5000
RATING_MIN = 1
RATING_MAX = 5
SUBMISSION_FIELDS = ("customer_name", "customer_email", "feedback_text", "rating")
ALLOWED_CONTROL_CHARS = frozenset("\n\t")

SentimentLabel = Literal["positive", "neutral", "negative"]


class FeedbackSubmission(BaseModel):
    """One customer's feedback after validation: trimmed, strictly typed, nothing extra."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        str_strip_whitespace=True,
        frozen=True,
        # The OpenAPI example; schemathesis sends it as one of its valid requests.
        json_schema_extra={
            "examples": [
                {
                    "customer_name": "Ada Lovelace",
                    "customer_email": "ada@example.com",
                    "feedback_text": "Fast delivery, thank you!",
                    "rating": 5,
                }
            ]
        },
    )

    customer_name: str = Field(
        min_length=1, max_length=NAME_MAX_CHARS, description="Name as the customer typed it."
    )
    customer_email: str = Field(
        description="Email address, syntax-checked without DNS lookups and normalised. The part "
        "before the @ must be ASCII; an internationalised domain is stored in its ASCII (xn--) form."
    )
    feedback_text: str = Field(
        min_length=TEXT_MIN_CHARS,
        max_length=TEXT_MAX_CHARS,
        description="Free text. Newlines and tabs are kept; CRLF is stored as LF.",
    )
    rating: int = Field(ge=RATING_MIN, le=RATING_MAX, description="Whole-number rating, 1 to 5.")

    @field_validator("customer_name")
    @classmethod
    def _reject_control_chars_in_name(cls, value: str) -> str:
        _raise_on_control_chars(value, allowed=frozenset())
        return value

    @field_validator("customer_email")
    @classmethod
    def _check_email_syntax(cls, value: str) -> str:
        try:
            # The confirmation goes out through apprise, which drops a recipient with non-ASCII
            # characters (apprise 2.2.0). So SMTPUTF8 addresses are rejected here, and an
            # internationalised domain is stored in its ASCII (xn--) form, which apprise accepts.
            checked = email_validator.validate_email(value, check_deliverability=False, allow_smtputf8=False)
        except email_validator.EmailNotValidError as error:
            raise ValueError(str(error)) from error

        # apprise parses the address with its own pattern, which is narrower than RFC 5322:
        # it drops "o'brien@example.com" to "brien@example.com" and rejects "a+b+c@example.com".
        # Such an address would get no confirmation, or send it to someone else.
        # TODO: accept these valid addresses once the sender delivers to them unchanged.
        address = checked.ascii_email
        parsed = apprise_parse_email(address)
        if not parsed or parsed["full_email"] != address:
            raise PydanticCustomError(
                "email_undeliverable",
                "customer_email '{address}' is valid, but the mail sender cannot deliver to it "
                "because of characters such as ' or a second + before the @; use another address.",
                {"address": address},
            )
        return address

    @field_validator("feedback_text", mode="before")
    @classmethod
    def _normalise_newlines(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("\r\n", "\n")
        return value

    @field_validator("feedback_text")
    @classmethod
    def _reject_control_chars_in_text(cls, value: str) -> str:
        _raise_on_control_chars(value, allowed=ALLOWED_CONTROL_CHARS)
        return value


def _raise_on_control_chars(value: str, *, allowed: frozenset[str]) -> None:
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc" and char not in allowed:
            raise ValueError(f"control character U+{ord(char):04X} at position {position}")


class FieldError(BaseModel):
    """One rejected field and what the client should change."""

    field: str = Field(description="Field name, or 'body' when the body as a whole is wrong.")
    message: str = Field(description="What is wrong and how to fix it, for a person to read.")


class ValidationResult(BaseModel):
    """Outcome of validation: a submission, or the errors that rejected it."""

    submission: FeedbackSubmission | None = None
    errors: list[FieldError] = Field(default_factory=list)


class SubmissionToCheck(BaseModel):
    """One decoded body in a group of concurrent single submissions that ingest validates together."""

    payload: Any = Field(description="The decoded JSON object or form fields, not yet checked.")
    from_form: bool = Field(default=False, description="True for a form post, which may send the rating as a digit string.")
    feedback_id: UUID = Field(description="The id that the feedback gets when it is valid; log lines name it.")
    request_id: str = Field(description="X-Request-ID from the gateway; log lines carry it.")


class TextToScore(BaseModel):
    """One feedback text in a group of concurrent single submissions that ingest scores together."""

    text: str = Field(description="The feedback text.")
    feedback_id: UUID = Field(description="Id of the feedback; log lines name it.")
    request_id: str = Field(description="X-Request-ID from the gateway; log lines carry it.")


class IdempotencyClaim(BaseModel):
    """A client's Idempotency-Key with the fingerprint of the submission it was sent with."""

    key: str = Field(description="The Idempotency-Key header, 1 to 255 printable ASCII characters.")
    scope: str = Field(default="", description="Id of the caller's API key; keys are unique per scope.")
    body_sha256: str = Field(description="SHA-256 of the validated submission as canonical JSON.")

    @property
    def scoped_key(self) -> str:
        """The key as stored: scope and key, so that each API key has its own key space."""
        return f"{self.scope}/{self.key}"


class AcceptedSubmission(BaseModel):
    """A valid submission with the id, time and request id that ingest gave it."""

    id: UUID
    received_at: datetime = Field(description="When ingest accepted the request, in UTC.")
    request_id: str = Field(description="X-Request-ID from the gateway, or Serve's own id.")
    submission: FeedbackSubmission
    idempotency: IdempotencyClaim | None = None


class Sentiment(BaseModel):
    """Sentiment of one feedback text."""

    label: SentimentLabel = Field(description="Label from the score and the neutral band.")
    score: float = Field(ge=0.0, le=1.0, description="Probability that the text is positive.")
    model_version: str = Field(description="Model that produced the score.")


class FeedbackRecord(BaseModel):
    """A feedback row as stored in DuckDB and handed to notification."""

    id: UUID
    received_at: datetime = Field(description="When ingest accepted the request, in UTC.")
    request_id: str = Field(description="X-Request-ID from the gateway, or Serve's own id.")
    # None after retention anonymised the row.
    customer_name: str | None
    customer_email: str | None
    feedback_text: str | None
    rating: int
    sentiment_label: SentimentLabel | None = Field(
        default=None, description="None while enrichment is pending: the model failed and the row is scored later."
    )
    sentiment_score: float | None = None
    model_version: str | None = None

    @property
    def sentiment_pending(self) -> bool:
        return self.sentiment_label is None

    def with_sentiment(self, sentiment: Sentiment) -> "FeedbackRecord":
        """Return a copy of this record with the sentiment filled in."""
        return self.model_copy(
            update={
                "sentiment_label": sentiment.label,
                "sentiment_score": sentiment.score,
                "model_version": sentiment.model_version,
            }
        )


NotificationKind = Literal["confirmation", "admin_alert"]
OutboxStatus = Literal["pending", "sent", "dead"]


class OwedNotification(BaseModel):
    """One notification that a stored feedback owes: its kind and target id."""

    kind: NotificationKind
    target: str = Field(description="'customer', or the id of an admin apprise URL.")


class OutboxEntry(BaseModel):
    """One row of the notification outbox."""

    id: UUID
    feedback_id: UUID
    kind: NotificationKind
    target: str
    status: OutboxStatus = Field(description="pending until sent; dead after the last failed try.")
    attempts: int = Field(description="Failed or finished tries so far.")
    next_attempt_at: datetime = Field(description="Earliest time of the next try, in UTC.")
    last_error: str | None = Field(default=None, description="Error of the last failed try.")
    created_at: datetime
    sent_at: datetime | None = None


class ClaimedNotification(BaseModel):
    """An outbox entry leased to one sender, with the feedback it is about."""

    entry: OutboxEntry
    record: FeedbackRecord


class DeliveryResult(BaseModel):
    """Result of one delivery attempt on a claimed outbox entry."""

    entry_id: UUID
    outcome: Literal["sent", "retry", "dead", "deferred"] = Field(
        description="sent; retry later (a failed try); dead (the last try failed); deferred "
        "(not tried because the target's circuit is open, so no try is counted)."
    )
    error: str | None = None
    next_attempt_at: datetime | None = Field(default=None, description="For retry and deferred.")


class StoreOutcome(BaseModel):
    """Result of storing one submission: created, replayed or conflict."""

    status: Literal["created", "replayed", "conflict"] = Field(
        description="created: stored now; replayed: the key was used before with the same "
        "submission; conflict: the key was used before with a different one."
    )
    record: FeedbackRecord | None = Field(
        default=None, description="The stored row: the new one, or the original for a replay."
    )


class SentimentOut(BaseModel):
    label: SentimentLabel
    score: float = Field(description="Probability that the text is positive, 0 to 1.")


class FeedbackCreated(BaseModel):
    """Body of a 201 response: the stored feedback's id, time and sentiment."""

    id: UUID
    received_at: datetime
    sentiment: SentimentOut | None = Field(
        description="null when the sentiment model was unavailable: the feedback is stored and "
        "scored later, and GET /v1/feedback/{id} shows the result."
    )
    sentiment_status: Literal["done", "pending"] = Field(
        description="pending while the feedback waits to be scored; done once it has a sentiment."
    )


class StoredFeedback(FeedbackCreated):
    """Body of GET /v1/feedback/{id}: everything stored about one submission."""

    request_id: str
    customer_name: str | None = Field(description="null after retention anonymised the feedback.")
    customer_email: str | None = Field(description="null after retention anonymised the feedback.")
    feedback_text: str | None = Field(description="null after retention anonymised the feedback.")
    rating: int
    model_version: str | None = Field(description="Model that scored the text; null while pending.")


MAX_BATCH_ITEMS = 500


class FeedbackBatch(BaseModel):
    """Body of POST /v1/feedback:batch: up to 500 submissions, each validated on its own."""

    submissions: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description="Submissions with the same fields as POST /v1/feedback. An invalid one is "
        "rejected with its errors and does not stop the others.",
    )


class BatchItemResult(BaseModel):
    """Outcome of one submission of a batch, by its index in the request."""

    index: int
    status: Literal["created", "replayed", "rejected", "conflict"] = Field(
        description="created: stored now; replayed: stored by an earlier request with the same "
        "Idempotency-Key; rejected: invalid, see errors; conflict: the item's key was used for "
        "another submission."
    )
    id: UUID | None = Field(default=None, description="Id of the stored feedback; null when rejected.")
    received_at: datetime | None = None
    sentiment: SentimentOut | None = None
    sentiment_status: Literal["done", "pending"] | None = None
    errors: list[FieldError] | None = Field(default=None, description="Each bad field of a rejected item.")


class BatchCreated(BaseModel):
    """Body of a 200 response to POST /v1/feedback:batch."""

    accepted: int = Field(description="Items stored now or before (created and replayed).")
    rejected: int = Field(description="Items not stored (rejected and conflict).")
    results: list[BatchItemResult] = Field(description="One result per submission, in request order.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, such as validation_failed.")
    message: str = Field(description="What failed and what to do next.")
    request_id: str | None = Field(default=None, description="Quote this id in a support request.")
    fields: list[FieldError] | None = Field(
        default=None, description="Each rejected field; present only for validation_failed."
    )


class ErrorResponse(BaseModel):
    """The single error shape of the gateway and the graph."""

    error: ErrorDetail


def validate_submission(payload: object, *, from_form: bool = False) -> ValidationResult:
    """Validate a decoded request body and return the submission or every field error.

    `from_form` marks an HTML form post. Its values all arrive as strings, so a rating of
    "4" is accepted there, while in JSON the rating must be a number.
    """
    if not isinstance(payload, dict):
        fields = ", ".join(SUBMISSION_FIELDS)
        message = f"The body must be a JSON object with the fields {fields}; got {_describe(payload)}."
        return ValidationResult(errors=[FieldError(field="body", message=message)])

    if from_form:
        payload = _coerce_form_values(payload)

    try:
        submission = FeedbackSubmission.model_validate(payload)
    except ValidationError as error:
        return ValidationResult(errors=[_explain(item, from_form=from_form) for item in error.errors()])

    return ValidationResult(submission=submission)


def _coerce_form_values(payload: dict[str, Any]) -> dict[str, Any]:
    coerced = dict(payload)
    rating = coerced.get("rating")
    if isinstance(rating, str) and rating.strip().isascii() and rating.strip().isdigit():
        coerced["rating"] = int(rating.strip())
    return coerced


def _explain(item: dict[str, Any], *, from_form: bool) -> FieldError:
    """Turn one pydantic error into a message a person can act on."""
    location = item.get("loc") or ("body",)
    field = str(location[0])
    kind = item["type"]
    value = item.get("input")

    if kind == "missing":
        return FieldError(field=field, message=f"{field} is required; add it to the request.")
    if kind == "extra_forbidden":
        allowed = ", ".join(SUBMISSION_FIELDS)
        return FieldError(field=field, message=f"Unknown field {field}; send only {allowed}.")
    if field == "rating":
        return FieldError(field=field, message=_explain_rating(value, from_form=from_form))
    if kind in {"string_type", "string_sub_type"}:
        return FieldError(field=field, message=f"{field} must be a string; got {_describe(value)}.")
    if kind == "string_unicode":
        # A JSON escape of half a UTF-16 surrogate pair, such as "\ud800", decodes to a code
        # point that UTF-8 cannot encode.
        return FieldError(
            field=field,
            message=f"{field} contains an unpaired surrogate escape such as \\ud800; send valid Unicode text.",
        )
    if field == "customer_name" and kind == "string_too_short":
        return FieldError(field=field, message="customer_name is empty; enter a name of 1 to 200 characters.")
    if field == "customer_name" and kind == "string_too_long":
        return FieldError(field=field, message=f"customer_name has {len(value)} characters; shorten it to at most {NAME_MAX_CHARS}.")
    if field == "feedback_text" and kind == "string_too_short":
        return FieldError(field=field, message=f"feedback_text has {len(value.strip())} characters after trimming; write at least {TEXT_MIN_CHARS}.")
    if field == "feedback_text" and kind == "string_too_long":
        return FieldError(field=field, message=f"feedback_text has {len(value.strip())} characters; shorten it to at most {TEXT_MAX_CHARS}.")
    if kind == "email_undeliverable":
        return FieldError(field=field, message=item["msg"])
    if field == "customer_email":
        reason = str(item.get("ctx", {}).get("error", item["msg"]))
        return FieldError(field=field, message=f"customer_email is not a valid email address: {reason}")
    if kind == "value_error" and "control character" in str(item.get("ctx", {}).get("error", "")):
        reason = item["ctx"]["error"]
        allowed = " other than newline and tab" if field == "feedback_text" else ""
        return FieldError(field=field, message=f"{field} contains a {reason}; remove control characters{allowed}.")
    return FieldError(field=field, message=f"{field} is invalid: {item['msg']}.")


def _explain_rating(value: object, *, from_form: bool) -> str:
    expected = f"rating must be a whole number from {RATING_MIN} to {RATING_MAX}"
    if from_form and isinstance(value, str):
        return f"{expected}, written with digits only; got {_describe(value)}."
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return f"{expected}, sent as a JSON number; got {_describe(value)}."
    if isinstance(value, float):
        return f"{expected}; got the fraction {value}."
    if isinstance(value, int):
        return f"{expected}; got {value}."
    return f"{expected}; got {_describe(value)}."


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "the boolean " + ("true" if value else "false")
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "…"
        return f"the string {shown!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    return f"a value of type {type(value).__name__}"
