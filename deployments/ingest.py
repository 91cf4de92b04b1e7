"""Ingest deployment: the FastAPI ingress of the feedback graph.

`POST /v1/feedback` returns 201 only after the row is committed in DuckDB. The request goes
validation -> enrichment -> persistence through deployment handles. Concurrent single
submissions share those calls: `@serve.batch` methods of this class collect them into groups
and make one call per group and stage. Notifications are queued after the commit and never
delay or fail the response.
"""


import asyncio
import functools
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Literal

import ray.exceptions
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from feedbackbot.errors import EnrichmentError, StoreError, error_summary
from feedbackbot.metrics import IngestMetrics
from feedbackbot.settings import IngestSettings, StageTimeouts, load_settings
from feedbackbot.http_api import (
    ERROR_RESPONSES,
    HEALTH_RESPONSES,
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
    install_openapi_contract,
    parse_json_object,
    request_id_of,
    sentiment_fields,
    shallow_payload,
)
from feedbackbot.privacy_http import read_privacy_request
from feedbackbot.web import admin as web_admin
from feedbackbot.web import form as web_form
from feedbackbot.web.pages import static_asset
from models.listing import MAX_LIST_LIMIT, FeedbackQuery, SentimentFilter
from models.privacy import ErasureRequest, ErasureResult, PrivacyExport, PrivacyRequest
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
    SubmissionToCheck,
    TextToScore,
    ValidationResult,
)

logger = logging.getLogger("ray.serve")

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
HEALTH_TIMEOUT_S = 5.0
RETRY_AFTER_S = 5
# Default size and wait of the groups of single submissions. The `user_config` of Ingest
# overrides them.
GROUP_MAX_SIZE = 32
GROUP_WAIT_S = 0.002
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
install_openapi_contract(api)


def stored_feedback(record: FeedbackRecord) -> StoredFeedback:
    """Return the API's view of a stored row."""
    return StoredFeedback(
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


def as_utc(moment: datetime | None) -> datetime | None:
    """Return an aware time in UTC; a time without an offset is taken as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _counted_in_flight(method: Callable[..., Awaitable[JSONResponse]]) -> Callable[..., Awaitable[JSONResponse]]:
    """Wrap an Ingest method so that the replica counts each call as a single submission in flight."""

    @functools.wraps(method)
    async def counted(self: Any, *args: Any, **kwargs: Any) -> JSONResponse:
        self._count_in_flight(1)
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._count_in_flight(-1)

    return counted


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
        self._metrics = IngestMetrics()
        self._settings = IngestSettings(max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=GROUP_WAIT_S)
        # Single submissions in this replica; groups wait longer while there are many.
        self._in_flight = 0
        self._busy = False

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
        response = await self._submit_one(request)
        self._metrics.count_response("single", response)
        return response

    async def _submit_one(self, request: Request) -> JSONResponse:
        parsed = await self._read_payload(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        payload, from_form = parsed
        return await self._accept(request, payload, from_form, idempotency_claim)

    @_counted_in_flight
    async def _accept(
        self,
        request: Request,
        payload: object,
        from_form: bool,
        claim_of: Callable[[Request, FeedbackSubmission], IdempotencyClaim | JSONResponse | None],
    ) -> JSONResponse:
        """Validate, score and store one submission; `claim_of` returns its idempotency claim.

        The API passes the Idempotency-Key header's claim, the web form its form key's claim.
        """
        # The id is drawn before validation so that every deployment's log lines of this
        # request can name it. It is used only when the submission is valid.
        feedback_id = uuid.uuid4()
        to_check = SubmissionToCheck(
            payload=shallow_payload(payload), from_form=from_form, feedback_id=feedback_id, request_id=request_id_of(request)
        )
        try:
            result: ValidationResult = await self._validate_together(to_check)
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

        claim = claim_of(request, result.submission)
        if isinstance(claim, JSONResponse):
            return claim

        persistence_timeout_s = self._timeouts.persistence_timeout_s
        try:
            if claim is not None:
                # A retry gets its response here without running the model. The commit checks the
                # key again, which covers repeats that arrive at the same time.
                earlier: StoreOutcome | None = await self._find_claims_together(claim)
                if earlier is not None:
                    return self._answer_repeat(request, earlier, claim)

            accepted = AcceptedSubmission(
                id=feedback_id,
                received_at=datetime.now(timezone.utc),
                request_id=request_id_of(request),
                submission=result.submission,
                idempotency=claim,
            )
            sentiment = await self._score(accepted)
            outcome: StoreOutcome = await self._store_together((accepted, sentiment))
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
            "Stored feedback %s (rating %d, sentiment %s)",
            record.id, record.rating, record.sentiment_label or "pending",
            extra={"feedback_id": str(record.id)},
        )  # fmt: skip
        return created_response(record)

    async def _score(self, accepted: AcceptedSubmission) -> Sentiment | None:
        """Return the sentiment, or None when the model fails or is too slow; the row is then scored later."""
        timeout_s = self._timeouts.enrichment_timeout_s
        to_score = TextToScore(
            text=accepted.submission.feedback_text, feedback_id=accepted.id, request_id=accepted.request_id
        )
        try:
            return await self._score_together(to_score)
        except asyncio.TimeoutError:
            problem = f"took longer than {timeout_s:g} s"
        except (EnrichmentError, BackPressureError, ray.exceptions.RayError) as error:
            problem = f"failed: {error_summary(error)}"
        logger.warning(
            "Sentiment of feedback %s %s; storing it without sentiment to score later",
            accepted.id, problem,
            extra={"feedback_id": str(accepted.id)},
        )  # fmt: skip
        return None

    # Concurrent single submissions go to each deployment in groups, one call per group, as
    # a submitted batch does, because Ray's RPC and Serve's routing were the largest CPU cost
    # of this replica in the profile of `make bench`. A group call has the time limit of a
    # single call. When it fails, every submission of the group gets the error. The group
    # size and wait come from the `user_config` of Ingest (see reconfigure).

    @serve.batch(max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=GROUP_WAIT_S)
    async def _validate_together(self, items: list[SubmissionToCheck]) -> list[ValidationResult]:
        return await await_within(self._validation.validate_each.remote(items), self._timeouts.validation_timeout_s)

    @serve.batch(max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=GROUP_WAIT_S)
    async def _find_claims_together(self, claims: list[IdempotencyClaim]) -> list[StoreOutcome | None]:
        return await await_within(self._persistence.find_claims.remote(claims), self._timeouts.persistence_timeout_s)

    # Two groups may be in flight, so that the next one already waits in the replica when the
    # model or the writer finishes the first.
    @serve.batch(max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=GROUP_WAIT_S, max_concurrent_batches=2)
    async def _score_together(self, items: list[TextToScore]) -> list[Sentiment]:
        return await await_within(self._enrichment.analyze_each.remote(items), self._timeouts.enrichment_timeout_s)

    @serve.batch(max_batch_size=GROUP_MAX_SIZE, batch_wait_timeout_s=GROUP_WAIT_S, max_concurrent_batches=2)
    async def _store_together(
        self, items: list[tuple[AcceptedSubmission, Sentiment | None]]
    ) -> list[StoreOutcome]:
        return await await_within(self._persistence.store_each.remote(items), self._timeouts.persistence_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the group size and waits of single submissions from user_config without a restart."""
        self._settings = load_settings(IngestSettings, user_config)
        for grouped in self._groups():
            grouped.set_max_batch_size(self._settings.max_batch_size)
        self._apply_group_wait()
        logger.info("Applied ingest settings %s", self._settings.model_dump())

    def _count_in_flight(self, change: int) -> None:
        """Count a single submission in or out, and switch the group wait when load crosses busy_in_flight."""
        self._in_flight += change
        busy = self._in_flight >= self._settings.busy_in_flight
        if busy != self._busy:
            self._busy = busy
            self._apply_group_wait()

    def _groups(self) -> tuple[Any, ...]:
        return (self._validate_together, self._find_claims_together, self._score_together, self._store_together)

    def _apply_group_wait(self) -> None:
        wait_s = self._settings.busy_batch_wait_timeout_s if self._busy else self._settings.batch_wait_timeout_s
        for grouped in self._groups():
            grouped.set_batch_wait_timeout_s(wait_s)

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
        response = await self._submit_many(request)
        self._metrics.count_response("batch", response)
        return response

    async def _submit_many(self, request: Request) -> JSONResponse:
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
        self._metrics.count_batch_items(result.status for result in results)
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
            logger.info(
                "Replayed feedback %s for a repeated Idempotency-Key",
                outcome.record.id,
                extra={"feedback_id": str(outcome.record.id)},
            )
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
        return JSONResponse(stored_feedback(record).model_dump(mode="json"))

    @api.get(
        "/v1/feedback",
        response_model=list[StoredFeedback],
        responses=ERROR_RESPONSES,
        summary="List stored feedback, newest first (analyst or admin key)",
    )
    async def list_feedback(
        self,
        request: Request,
        rating: int | None = Query(default=None, ge=1, le=5, description="Only feedback with this rating."),
        sentiment: SentimentFilter | None = Query(
            default=None, description="Only this sentiment label; `pending` selects feedback not scored yet."
        ),
        since: datetime | None = Query(
            default=None, description="Only feedback received at or after this ISO 8601 time; without an offset it is UTC."
        ),
        until: datetime | None = Query(
            default=None, description="Only feedback received before this ISO 8601 time; without an offset it is UTC."
        ),
        limit: int = Query(default=100, ge=1, le=MAX_LIST_LIMIT, description="Maximum number of rows returned."),
    ) -> JSONResponse:
        query = FeedbackQuery(rating=rating, sentiment=sentiment, since=as_utc(since), until=as_utc(until), limit=limit)
        try:
            records: list[FeedbackRecord] = await await_within(
                self._persistence.list_feedback.remote(query), self._timeouts.persistence_timeout_s
            )
        except (asyncio.TimeoutError, StoreError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("Listing feedback failed: %s", error_summary(error))
            return self._unavailable(request, "The feedback could not be read right now")
        return JSONResponse([stored_feedback(record).model_dump(mode="json") for record in records])

    # The browser pages (feedbackbot/web). They are left out of /openapi.json because they
    # return HTML for people, not the API's JSON.
    @api.get("/", include_in_schema=False)
    async def web_form_page(self, request: Request) -> HTMLResponse:
        return web_form.form_page(request)

    @api.post("/", include_in_schema=False)
    async def web_form_submit(self, request: Request) -> HTMLResponse:
        async def accept_and_count(*arguments: Any) -> JSONResponse:
            # Form posts count as single submissions in the metrics, like POST /v1/feedback.
            response = await self._accept(*arguments)
            self._metrics.count_response("single", response)
            return response

        return await web_form.submit(request, accept_and_count)

    @api.get("/static/{name}", include_in_schema=False)
    async def web_static(self, name: str) -> Response:
        return static_asset(name)

    @api.get("/admin/sign-in", include_in_schema=False)
    async def web_sign_in(self, request: Request) -> HTMLResponse:
        return web_admin.sign_in_page(request)

    @api.get("/admin", include_in_schema=False)
    async def web_admin_page(self, request: Request) -> HTMLResponse:
        return await web_admin.admin_page(request, self._persistence, self._timeouts.persistence_timeout_s)

    @api.post("/admin/outbox/{entry_id}/retry", include_in_schema=False)
    async def web_retry(self, entry_id: uuid.UUID, request: Request) -> Response:
        return await web_admin.retry(request, entry_id, self._persistence, self._timeouts.persistence_timeout_s)

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

    @api.post(
        "/v1/admin/privacy/export",
        response_model=PrivacyExport,
        responses=ERROR_RESPONSES,
        summary="Export everything stored about one email address (admin key)",
        description="The address goes in the JSON body, never in the URL, so that access logs do not record it.",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": PrivacyRequest.model_json_schema()}}}
        },
    )
    async def export_address(self, request: Request) -> JSONResponse:
        parsed = await read_privacy_request(request, PrivacyRequest)
        if isinstance(parsed, JSONResponse):
            return parsed

        try:
            exported: PrivacyExport = await await_within(
                self._persistence.export_address.remote(parsed.email), self._timeouts.persistence_timeout_s
            )
        except (asyncio.TimeoutError, StoreError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("Export of one address failed: %s", error_summary(error))
            return self._unavailable(request, "The data could not be read right now")
        logger.info(
            "Exported %d feedback row(s) of one address (sha256 %s…)", len(exported.feedback), exported.email_sha256[:12]
        )
        return JSONResponse(exported.model_dump(mode="json"))

    @api.post(
        "/v1/admin/privacy/erase",
        response_model=ErasureResult,
        responses=ERROR_RESPONSES,
        summary="Erase everything stored about one email address (admin key)",
        description="Deletes the address's feedback rows with their outbox entries and Idempotency-Key "
        "records in one transaction, records the erasure with the address's SHA-256, and rewrites the "
        "Parquet snapshots without the rows within snapshot_max_age_s. An unknown address returns "
        "zero counts and is recorded too.",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": ErasureRequest.model_json_schema()}}}
        },
    )
    async def erase_address(self, request: Request) -> JSONResponse:
        parsed = await read_privacy_request(request, ErasureRequest)
        if isinstance(parsed, JSONResponse):
            return parsed

        try:
            result: ErasureResult = await await_within(
                self._persistence.erase_address.remote(parsed.email, parsed.reason, request_id_of(request)),
                self._timeouts.persistence_timeout_s,
            )
        except asyncio.TimeoutError:
            logger.error("The erasure took longer than %.1f s; its outcome is unknown", self._timeouts.persistence_timeout_s)
            return self._unavailable(request, "The database did not confirm the erasure in time, so it may or may not have happened")
        except (StoreError, BackPressureError, ray.exceptions.RayError) as error:
            logger.error("Erasure of one address failed: %s", error_summary(error))
            return self._unavailable(request, "The data could not be erased right now and nothing was deleted")
        return JSONResponse(result.model_dump(mode="json"))

    @api.get("/healthz", summary="Health of every deployment", responses=HEALTH_RESPONSES)
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

    @api.get("/livez", summary="Liveness: the ingest replica responds")
    async def livez(self) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @api.get(
        "/readyz",
        summary="Readiness of every deployment; 503 names the deployments that are not ready",
        responses=HEALTH_RESPONSES,
    )
    async def readyz(self) -> JSONResponse:
        handles = {
            "validation": self._validation,
            "enrichment": self._enrichment,
            "persistence": self._persistence,
            "notification": self._notification,
        }
        checks = [asyncio.wait_for(await_response(handle.ready.remote()), HEALTH_TIMEOUT_S) for handle in handles.values()]
        results = await asyncio.gather(*checks, return_exceptions=True)

        report: dict[str, Any] = {"ingest": {"live": True, "ready": True}}
        for name, result in zip(handles, results):
            if isinstance(result, asyncio.TimeoutError):
                report[name] = {"live": False, "ready": False, "reason": f"no response within {HEALTH_TIMEOUT_S:g} s"}
            elif isinstance(result, BaseException):
                report[name] = {"live": False, "ready": False, "reason": error_summary(result)}
            else:
                report[name] = {"live": True, **result}

        failing = [name for name, part in report.items() if not part.get("ready")]
        if not failing:
            return JSONResponse({"status": "ready", "deployments": report})
        logger.warning("Readiness check failed for %s: %s", ", ".join(failing), {name: report[name] for name in failing})
        return JSONResponse(
            {"status": "not_ready", "failing": failing, "deployments": report},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
