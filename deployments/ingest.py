"""Ingest deployment: the FastAPI ingress of the feedback graph.

`POST /v1/feedback` returns 201 only after the row is committed in DuckDB. The request goes
validation -> enrichment -> persistence through deployment handles, and the sentiment
response is passed straight into the persistence call so that Serve chains the two.
Notifications are queued after the commit and never delay or fail the response.
"""


import asyncio
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

import ray.exceptions
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from feedbackbot.errors import EnrichmentError, StoreError, error_summary
from feedbackbot.settings import StageTimeouts
from feedbackbot.http_api import (
    ERROR_RESPONSES,
    IDEMPOTENCY_KEY_PARAMETER,
    await_response,
    await_within,
    batch_claims,
    batch_envelope,
    batch_item,
    created_response,
    error_response,
    form_payload,
    idempotency_claim,
    install_error_handlers,
    parse_json_object,
    request_id_of,
    sentiment_fields,
)
from models.feedback import (
    AcceptedSubmission,
    BatchCreated,
    FeedbackBatch,
    FeedbackCreated,
    FeedbackRecord,
    FeedbackSubmission,
    IdempotencyClaim,
    OutboxEntry,
    Sentiment,
    FieldError,
    StoredFeedback,
    StoreOutcome,
    ValidationResult,
)

logger = logging.getLogger("ray.serve")

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
HEALTH_TIMEOUT_S = 5.0
RETRY_AFTER_S = 5
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"

# No /docs page: FastAPI's Swagger UI loads its scripts from a CDN, which offline
# deployments cannot reach. /openapi.json is served.
api = FastAPI(
    title="feedbackbot",
    version="0.1.0",
    docs_url=None,
    redoc_url=None,
    description="Submit customer feedback and read it back. Every error has the shape "
    '`{"error": {"code", "message", "request_id", "fields"}}`.',
)
install_error_handlers(api)


@serve.deployment
@serve.ingress(api)
class Ingest:
    """HTTP entry point: parses bodies, runs the graph and maps outcomes to status codes."""

    def __init__(
        self,
        validation: DeploymentHandle,
        enrichment: DeploymentHandle,
        persistence: DeploymentHandle,
        notification: DeploymentHandle,
        idempotency_window_s: float,
        timeouts: StageTimeouts,
    ) -> None:
        self._idempotency_window_h = idempotency_window_s / 3600
        self._timeouts = timeouts
        self._validation = validation
        self._enrichment = enrichment
        self._persistence = persistence
        self._notification = notification

    @api.post(
        "/v1/feedback",
        status_code=201,
        response_model=FeedbackCreated,
        responses=ERROR_RESPONSES,
        summary="Submit one feedback",
        openapi_extra={
            "parameters": [IDEMPOTENCY_KEY_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {
                    JSON_TYPE: {"schema": FeedbackSubmission.model_json_schema()},
                    FORM_TYPE: {"schema": FeedbackSubmission.model_json_schema()},
                },
            }
        },
    )
    async def submit(self, request: Request) -> JSONResponse:
        parsed = await self._read_payload(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        payload, from_form = parsed

        try:
            result: ValidationResult = await await_within(
                self._validation.validate.remote(payload, from_form), self._timeouts.validation_timeout_s
            )
        except (asyncio.TimeoutError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("Validation failed or timed out: %s", error_summary(error))
            return self._unavailable(request, "The feedback could not be checked right now and was not kept")
        if result.errors:
            return error_response(
                request,
                422,
                "validation_failed",
                f"{len(result.errors)} field(s) are invalid; fix them and submit again.",
                fields=result.errors,
            )

        claim = idempotency_claim(request, result.submission)
        if isinstance(claim, JSONResponse):
            return claim

        persistence_timeout_s = self._timeouts.persistence_timeout_s
        try:
            if claim is not None:
                # A retry gets its response here without running the model. The commit checks the
                # key again, which covers repeats that arrive at the same time.
                earlier: StoreOutcome | None = await await_within(
                    self._persistence.find_claim.remote(claim), persistence_timeout_s
                )
                if earlier is not None:
                    return self._answer_repeat(request, earlier, claim)

            accepted = AcceptedSubmission(
                id=uuid.uuid4(),
                received_at=datetime.now(timezone.utc),
                request_id=request_id_of(request),
                submission=result.submission,
                idempotency=claim,
            )
            sentiment = await self._score(accepted)
            outcome: StoreOutcome = await await_within(
                self._persistence.store.remote(accepted, sentiment), persistence_timeout_s
            )
        except asyncio.TimeoutError:
            logger.error("The commit took longer than %.1f s; its outcome is unknown", persistence_timeout_s)
            return self._unavailable(
                request,
                "The database did not confirm the feedback in time, so it may or may not be stored",
                same_key=True,
            )
        except (StoreError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("Feedback was not stored: %s", error_summary(error))
            return self._unavailable(request, "The feedback could not be stored right now and was not kept")

        if outcome.status != "created":
            return self._answer_repeat(request, outcome, claim)

        record = outcome.record
        logger.info(
            "Stored feedback %s (rating %d, sentiment %s)", record.id, record.rating, record.sentiment_label or "pending"
        )
        return created_response(record)

    async def _score(self, accepted: AcceptedSubmission) -> Sentiment | None:
        """Return the sentiment, or None when the model fails or is too slow; the row is then scored later."""
        timeout_s = self._timeouts.enrichment_timeout_s
        try:
            return await await_within(self._enrichment.analyze.remote(accepted.submission.feedback_text), timeout_s)
        except asyncio.TimeoutError:
            problem = f"took longer than {timeout_s:g} s"
        except (EnrichmentError, BackPressureError, ray.exceptions.RayError) as error:
            problem = f"failed: {error_summary(error)}"
        logger.warning("Sentiment of feedback %s %s; storing it without sentiment to score later", accepted.id, problem)
        return None

    def _unavailable(self, request: Request, problem: str, *, same_key: bool = False) -> JSONResponse:
        """Return the retryable 503 in the common error shape."""
        advice = (
            "submit it again with the same Idempotency-Key" if same_key else "submit it again"
        )
        return error_response(
            request,
            503,
            "unavailable",
            f"{problem}; {advice} after {RETRY_AFTER_S} seconds.",
            retry_after_s=RETRY_AFTER_S,
        )

    @api.post(
        "/v1/feedback:batch",
        response_model=BatchCreated,
        responses=ERROR_RESPONSES,
        summary="Submit up to 500 feedbacks at once",
        description="Each submission is validated on its own and gets its own result; the valid "
        "ones are scored and committed in one transaction. With an Idempotency-Key header, item i "
        "is keyed `<key>#<i>`, so a retry of the whole batch stores nothing twice.",
        openapi_extra={
            "parameters": [IDEMPOTENCY_KEY_PARAMETER],
            "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": FeedbackBatch.model_json_schema()}}},
        },
    )
    async def submit_batch(self, request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BATCH_BODY_BYTES:
            return error_response(
                request, 413, "payload_too_large", f"The body has {len(body)} bytes; send at most {MAX_BATCH_BODY_BYTES}."
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON_TYPE:
            return error_response(
                request, 415, "unsupported_media_type", f"Content-Type {content_type!r} is not supported; send {JSON_TYPE}."
            )
        items = batch_envelope(request, body)
        if isinstance(items, JSONResponse):
            return items

        try:
            checked: list[ValidationResult] = await await_within(
                self._validation.validate_many.remote(items), self._timeouts.validation_timeout_s
            )
        except (asyncio.TimeoutError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("Validation of a batch failed or timed out: %s", error_summary(error))
            return self._unavailable(request, "The batch could not be checked right now and was not kept")
        claims = batch_claims(request, [result.submission for result in checked])
        if isinstance(claims, JSONResponse):
            return claims

        try:
            outcomes = await self._store_batch(request, checked, claims)
        except asyncio.TimeoutError:
            logger.error("The commit of a batch took longer than %.1f s; its outcome is unknown", self._timeouts.persistence_timeout_s)
            return self._unavailable(
                request,
                "The database did not confirm the batch in time, so it may or may not be stored",
                same_key=True,
            )
        except (StoreError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("A batch was not stored: %s", error_summary(error))
            return self._unavailable(request, "The batch could not be stored right now and was not kept")

        results = [
            batch_item(index, outcomes.get(index), result.errors or None) for index, result in enumerate(checked)
        ]
        accepted = sum(1 for result in results if result.status in ("created", "replayed"))
        created = sum(1 for result in results if result.status == "created")
        logger.info("Stored %d of a batch of %d (%d accepted before)", created, len(results), accepted - created)
        response = BatchCreated(accepted=accepted, rejected=len(results) - accepted, results=results)
        return JSONResponse(response.model_dump(mode="json"))

    async def _store_batch(
        self, request: Request, checked: list[ValidationResult], claims: list[IdempotencyClaim | None]
    ) -> dict[int, StoreOutcome]:
        """Commit the valid items of a batch that no earlier request stored; return outcomes by index."""
        timeout_s = self._timeouts.persistence_timeout_s
        outcomes: dict[int, StoreOutcome] = {}

        keyed = [index for index, claim in enumerate(claims) if claim is not None]
        if keyed:
            earlier = await await_within(
                self._persistence.find_claims.remote([claims[index] for index in keyed]), timeout_s
            )
            outcomes.update((index, outcome) for index, outcome in zip(keyed, earlier) if outcome is not None)

        fresh = [index for index, result in enumerate(checked) if result.submission is not None and index not in outcomes]
        if not fresh:
            return outcomes

        now = datetime.now(timezone.utc)
        accepted = [
            AcceptedSubmission(
                id=uuid.uuid4(),
                received_at=now,
                request_id=request_id_of(request),
                submission=checked[index].submission,
                idempotency=claims[index],
            )
            for index in fresh
        ]
        sentiments = await self._score_many(accepted)
        stored: list[StoreOutcome] = await await_within(
            self._persistence.store_many.remote(list(zip(accepted, sentiments))), timeout_s
        )
        outcomes.update(zip(fresh, stored))
        return outcomes

    async def _score_many(self, accepted: list[AcceptedSubmission]) -> list[Sentiment | None]:
        """Return the sentiment of each item, or None for all when the model fails or is too slow."""
        timeout_s = self._timeouts.enrichment_batch_timeout_s
        texts = [item.submission.feedback_text for item in accepted]
        try:
            return await await_within(self._enrichment.analyze_many.remote(texts), timeout_s)
        except asyncio.TimeoutError:
            problem = f"took longer than {timeout_s:g} s"
        except (EnrichmentError, BackPressureError, ray.exceptions.RayError) as error:
            problem = f"failed: {error_summary(error)}"
        logger.warning("Sentiment of a batch of %d %s; storing it without sentiment to score later", len(texts), problem)
        return [None] * len(texts)

    def _answer_repeat(self, request: Request, outcome: StoreOutcome, claim: IdempotencyClaim) -> JSONResponse:
        """Return the response to a repeated Idempotency-Key: the original 201, or 409 for another submission."""
        if outcome.status == "replayed":
            logger.info("Replayed feedback %s for a repeated Idempotency-Key", outcome.record.id)
            return created_response(outcome.record, replayed=True)

        logger.info("Rejected a reused Idempotency-Key with a different submission")
        hours = self._idempotency_window_h
        return error_response(
            request,
            409,
            "idempotency_conflict",
            f"The Idempotency-Key {claim.key!r} was already used for a different submission in the last "
            f"{hours:g} h; send a new key with each new submission.",
        )

    async def _read_payload(self, request: Request) -> tuple[object, bool] | JSONResponse:
        """Return the decoded body and whether it came from a form, or an error response."""
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return error_response(
                request, 413, "payload_too_large", f"The body has {len(body)} bytes; send at most {MAX_BODY_BYTES}."
            )

        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == FORM_TYPE:
            form = await request.form()
            payload, duplicates = form_payload(form.multi_items())
            if duplicates:
                fields = [
                    FieldError(field=name, message=f"{name} appears more than once in the form; send it once.")
                    for name in duplicates
                ]
                return error_response(
                    request, 422, "validation_failed", "The form repeats fields.", fields=fields
                )
            return payload, True
        if content_type != JSON_TYPE:
            return error_response(
                request,
                415,
                "unsupported_media_type",
                f"Content-Type {content_type!r} is not supported; send {JSON_TYPE} or {FORM_TYPE}.",
            )

        try:
            return parse_json_object(body), False
        except (ValueError, UnicodeDecodeError) as error:
            message = f"The body is not valid JSON: {error}. Send a JSON object."
            return error_response(
                request,
                422,
                "validation_failed",
                "The body is not valid JSON.",
                fields=[FieldError(field="body", message=message)],
            )

    @api.get(
        "/v1/feedback/{feedback_id}",
        response_model=StoredFeedback,
        responses=ERROR_RESPONSES,
        summary="Read one stored feedback (admin key)",
    )
    async def read(self, feedback_id: uuid.UUID, request: Request) -> JSONResponse:
        record: FeedbackRecord | None = await self._persistence.get.remote(feedback_id)
        if record is None:
            return error_response(request, 404, "not_found", f"No feedback with id {feedback_id}.")

        stored = StoredFeedback(
            id=record.id,
            received_at=record.received_at,
            **sentiment_fields(record),
            request_id=record.request_id,
            customer_name=record.customer_name,
            customer_email=record.customer_email,
            feedback_text=record.feedback_text,
            rating=record.rating,
            model_version=record.model_version,
        )
        return JSONResponse(stored.model_dump(mode="json"))

    @api.get(
        "/v1/admin/outbox",
        response_model=list[OutboxEntry],
        responses=ERROR_RESPONSES,
        summary="List outbox entries by status (admin key)",
    )
    async def list_outbox(
        self,
        request: Request,
        status: Literal["pending", "sent", "dead"] = "dead",
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> JSONResponse:
        entries: list[OutboxEntry] = await self._persistence.list_outbox.remote(status, limit)
        return JSONResponse([entry.model_dump(mode="json") for entry in entries])

    @api.post(
        "/v1/admin/outbox/{entry_id}/retry",
        response_model=OutboxEntry,
        responses=ERROR_RESPONSES,
        summary="Queue a dead outbox entry again (admin key)",
    )
    async def retry_outbox_entry(self, entry_id: uuid.UUID, request: Request) -> JSONResponse:
        entry: OutboxEntry | None = await self._persistence.requeue_notification.remote(entry_id)
        if entry is None:
            return error_response(
                request, 404, "not_found", f"No dead outbox entry {entry_id}; list them with GET /v1/admin/outbox?status=dead."
            )
        return JSONResponse(entry.model_dump(mode="json"))

    @api.get("/healthz", summary="Health of every deployment")
    async def healthz(self) -> JSONResponse:
        handles = {
            "validation": self._validation,
            "enrichment": self._enrichment,
            "persistence": self._persistence,
            "notification": self._notification,
        }
        checks = []
        for handle in handles.values():
            checks.append(asyncio.wait_for(await_response(handle.health.remote()), HEALTH_TIMEOUT_S))
        results = await asyncio.gather(*checks, return_exceptions=True)

        report: dict[str, Any] = {"ingest": {"status": "ok"}}
        for name, result in zip(handles, results):
            if isinstance(result, BaseException):
                report[name] = {"status": "failing", "error": error_summary(result)}
            else:
                report[name] = result

        healthy = all(part.get("status") == "ok" for part in report.values())
        status = "ok" if healthy else "degraded"
        return JSONResponse({"status": status, "deployments": report}, status_code=200 if healthy else 503)
