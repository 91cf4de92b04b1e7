"""HTTP helpers of the ingest deployment: the common error shape and body parsing.

They live outside deployments/ingest.py on purpose. Serve pickles the ingress class by
value, and module-level functions next to it were missing in the replica (NameError), while
functions imported from another module are pickled by reference and always resolve.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.feedback import (
    MAX_BATCH_ITEMS,
    BatchItemResult,
    ErrorDetail,
    ErrorResponse,
    FeedbackBatch,
    FeedbackCreated,
    FeedbackRecord,
    FeedbackSubmission,
    FieldError,
    IdempotencyClaim,
    SentimentOut,
    StoreOutcome,
)

logger = logging.getLogger("ray.serve")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "Missing or unknown X-API-Key (from the gateway).",
        403: "The key's role may not call this route (from the gateway).",
        404: "No such feedback, outbox entry or route.",
        413: "The body is larger than the route's limit: 64 KiB, or 4 MiB for a batch.",
        415: "The body is neither JSON nor an HTML form post.",
        409: "The Idempotency-Key was already used for a different submission.",
        422: "Invalid input; `fields` lists each bad field.",
        429: "Rate limit reached; retry after Retry-After seconds (from the gateway).",
        503: "A deployment cannot serve right now; retry after Retry-After seconds.",
    }.items()
}


IDEMPOTENCY_HEADER = "Idempotency-Key"
# Set by the gateway: a hash prefix of the caller's API key.
KEY_ID_HEADER = "X-Feedbackbot-Key-Id"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
IDEMPOTENCY_KEY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "Any 1 to 255 printable ASCII characters, new for each submission. A repeat with "
    "the same key and submission within the window returns the original 201 (with "
    "Idempotent-Replayed: true) and stores nothing; another submission with the key gets 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def idempotency_claim(request: Request, submission: FeedbackSubmission) -> IdempotencyClaim | JSONResponse | None:
    """Return the request's Idempotency-Key claim, None without the header, or a 422 response.

    The claim is scoped to the caller's API key through the key id that the gateway sends,
    so two clients that pick the same Idempotency-Key never see each other's submissions.
    """
    key = _idempotency_key(request)
    if key is None or isinstance(key, JSONResponse):
        return key
    return _claim(request, key, submission)


def batch_claims(
    request: Request, submissions: list[FeedbackSubmission | None]
) -> list[IdempotencyClaim | None] | JSONResponse:
    """Return one claim per valid batch item, keyed `<Idempotency-Key>#<index>`, or a 422 response.

    A retry of the whole batch with the same header therefore replays each stored item.
    """
    key = _idempotency_key(request)
    if isinstance(key, JSONResponse):
        return key
    return [
        None if key is None or submission is None else _claim(request, f"{key}#{index}", submission)
        for index, submission in enumerate(submissions)
    ]


def _idempotency_key(request: Request) -> str | JSONResponse | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or IDEMPOTENCY_KEY_PATTERN.match(key):
        return key

    if not key:
        problem = "it is empty"
    elif len(key) > 255:
        problem = f"it has {len(key)} characters"
    else:
        problem = "it contains a space, a control character or a non-ASCII character"
    message = f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters without spaces, but {problem}."
    return error_response(
        request,
        422,
        "validation_failed",
        f"The {IDEMPOTENCY_HEADER} header is invalid.",
        fields=[FieldError(field=IDEMPOTENCY_HEADER, message=message)],
    )


def _claim(request: Request, key: str, submission: FeedbackSubmission) -> IdempotencyClaim:
    # The fingerprint covers the validated submission, so a JSON post and a form post of the
    # same feedback, or two JSON encodings of it, count as the same submission.
    canonical = json.dumps(submission.model_dump(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return IdempotencyClaim(
        key=key,
        scope=request.headers.get(KEY_ID_HEADER, ""),
        body_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def batch_envelope(request: Request, body: bytes) -> list[dict[str, Any]] | JSONResponse:
    """Return the submissions of a batch body, or a 422 response that names the problem."""
    try:
        payload = parse_json_object(body)
    except (ValueError, UnicodeDecodeError) as error:
        problem = f"The body is not valid JSON: {error}. Send a JSON object."
        return error_response(
            request, 422, "validation_failed", "The body is not valid JSON.", fields=[FieldError(field="body", message=problem)]
        )

    try:
        submissions = FeedbackBatch.model_validate(payload).submissions
    except ValidationError:
        count = len(payload["submissions"]) if isinstance(payload, dict) and isinstance(payload.get("submissions"), list) else None
        got = f"got {count} items" if count is not None else "got no such list"
        problem = (
            f"submissions must be a list of 1 to {MAX_BATCH_ITEMS} JSON objects, each a submission with the "
            f"fields of POST /v1/feedback, and no other top-level field is allowed; {got}."
        )
        return error_response(
            request, 422, "validation_failed", "The batch is invalid.", fields=[FieldError(field="submissions", message=problem)]
        )

    # Validation gets each item as single submissions do, with array and object field values
    # emptied, so that a deeply nested value cannot exceed the recursion limit when Ray
    # pickles the batch.
    return [shallow_payload(item) for item in submissions]


def batch_item(index: int, outcome: StoreOutcome | None, errors: list[FieldError] | None = None) -> BatchItemResult:
    """Return the result of one batch item: its stored outcome, or its field errors."""
    if errors:
        return BatchItemResult(index=index, status="rejected", errors=errors)
    if outcome.status == "conflict":
        message = "The item's Idempotency-Key was already used for a different submission; send a new key with each new batch."
        return BatchItemResult(index=index, status="conflict", errors=[FieldError(field=IDEMPOTENCY_HEADER, message=message)])
    record = outcome.record
    return BatchItemResult(
        index=index, status=outcome.status, id=record.id, received_at=record.received_at, **sentiment_fields(record)
    )


def created_response(record: FeedbackRecord, *, replayed: bool = False) -> JSONResponse:
    """Build the 201 response for a stored feedback."""
    created = FeedbackCreated(id=record.id, received_at=record.received_at, **sentiment_fields(record))
    headers = {"Location": f"/v1/feedback/{record.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(created.model_dump(mode="json"), status_code=201, headers=headers)


def sentiment_fields(record: FeedbackRecord) -> dict[str, Any]:
    """Return the `sentiment` and `sentiment_status` fields of a response about this record."""
    if record.sentiment_pending:
        return {"sentiment": None, "sentiment_status": "pending"}
    return {
        "sentiment": SentimentOut(label=record.sentiment_label, score=record.sentiment_score),
        "sentiment_status": "done",
    }


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    fields: list[FieldError] | None = None,
    retry_after_s: int | None = None,
) -> JSONResponse:
    """Build a response in the common error shape, with the request's id."""
    body = ErrorResponse(
        error=ErrorDetail(code=code, message=message, request_id=request_id_of(request), fields=fields)
    )
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers)


def request_id_of(request: Request) -> str:
    """Return the gateway's X-Request-ID, else the id that Serve's proxy gave the request."""
    header = request.headers.get("x-request-id")
    if header:
        return header
    # NOTE: a private Serve API; it carries the id that the proxy generated when the
    # request came without the header, which only happens when the gateway is bypassed.
    context_id = serve.context._get_serve_request_context().request_id
    return context_id or uuid.uuid4().hex


def install_error_handlers(api: FastAPI) -> None:
    """Make FastAPI's own errors (bad path values, unknown routes, crashes) use the common shape."""

    @api.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [
            FieldError(field=str(item["loc"][-1]), message=f"{item['loc'][-1]} is invalid: {item['msg']}.")
            for item in error.errors()
        ]
        return error_response(request, 422, "validation_failed", "The request is invalid.", fields=fields)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(error.status_code, "http_error")
        message = str(error.detail)
        if error.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /openapi.json for the routes."
        response = error_response(request, error.status_code, code, message)

        # Starlette puts the Allow header of a 405 on the exception; RFC 9110 requires it.
        response.headers.update(error.headers or {})
        return response

    @api.exception_handler(Exception)
    async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("Unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            request,
            500,
            "internal_error",
            "The service failed unexpectedly; retry later and quote the request id if it persists.",
        )


# Routes that the gateway serves without an API key.
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
# The 503 of a health route: the route's own report when a deployment fails, or the common
# error shape when the gateway cannot reach the service.
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "A deployment is failing or not ready (the report names it), or the gateway "
        "cannot reach the service (the common error shape, with Retry-After).",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"type": "object", "required": ["status", "deployments"]},
                        {"$ref": "#/components/schemas/ErrorResponse"},
                    ]
                }
            }
        },
    }
}
REQUEST_ID_HEADER_DOC = {
    "description": "The client's X-Request-ID when it is 8 to 128 letters, digits, '.', '_', ':' "
    "or '-', else an id that the gateway generated.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{8,128}$"},
}
RETRY_AFTER_HEADER_DOC = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
CREATED_HEADERS_DOC = {
    "Location": {
        "description": "Path of the stored feedback: /v1/feedback/{id}.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "true when this is the original response to a repeated Idempotency-Key.",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
}
API_KEY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "X-API-Key",
    "description": "A submit key for the submission routes, an admin key for every route. The "
    "gateway checks it and does not forward it.",
}


def install_openapi_contract(api: FastAPI) -> None:
    """Add what the gateway adds to responses, and the API key, to the app's OpenAPI schema.

    Clients reach the service only through the gateway, so the schema describes the responses
    as the gateway sends them: every one carries X-Request-ID, and a 429 or 503 in the common
    error shape carries Retry-After.
    """

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            # FastAPI.openapi, not api.openapi: the instance attribute is this function.
            document_gateway_contract(FastAPI.openapi(api))
        return api.openapi_schema

    api.openapi = openapi


def document_gateway_contract(schema: dict[str, Any]) -> None:
    """Add the gateway's headers and the API key scheme to a generated OpenAPI schema, in place."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["ApiKey"] = API_KEY_SCHEME
    schema["security"] = [{"ApiKey": []}]

    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path in PUBLIC_PATHS:
                operation["security"] = []
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = REQUEST_ID_HEADER_DOC
                if status == "201":
                    headers.update(CREATED_HEADERS_DOC)
                if status in ("429", "503") and _is_error_shape(response):
                    headers["Retry-After"] = RETRY_AFTER_HEADER_DOC


def _is_error_shape(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == "#/components/schemas/ErrorResponse"


def parse_json_object(body: bytes) -> Any:
    """Decode a JSON body, rejecting duplicate keys, NaN or Infinity and deep nesting. Raises ValueError."""
    try:
        return json.loads(body, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except RecursionError as error:
        # The json module recurses once per array or object level, so a 64 KiB body of
        # brackets exceeds Python's recursion limit.
        raise ValueError("arrays or objects are nested too deeply") from error


def shallow_payload(payload: object) -> object:
    """Return the decoded body with each array or object field value replaced by an empty one.

    No field accepts an array or an object, whatever it contains, and the validation message
    names only the value's type. A deeply nested value could exceed Python's recursion limit
    when Ray pickles a group of submissions for validation, so ingest sends the empty value.
    """
    if not isinstance(payload, dict):
        return payload
    return {key: type(value)() if isinstance(value, (list, dict)) else value for key, value in payload.items()}


def form_payload(items: list[tuple[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Return the form's fields and the names that appear more than once."""
    payload: dict[str, Any] = {}
    duplicates: list[str] = []
    for key, value in items:
        if key in payload and key not in duplicates:
            duplicates.append(key)
        payload.setdefault(key, value)
    return payload, duplicates


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for key, value in pairs:
        if key in payload:
            raise ValueError(f"the key {key!r} appears more than once")
        payload[key] = value
    return payload


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def await_within(response: Any, timeout_s: float) -> Any:
    """Await a DeploymentResponse for at most `timeout_s` seconds.

    On timeout the request is cancelled in the replica too, and asyncio.TimeoutError is raised.
    """
    try:
        return await asyncio.wait_for(await_response(response), timeout_s)
    except asyncio.TimeoutError:
        response.cancel()
        raise


async def await_response(response: Any) -> Any:
    """Await a DeploymentResponse; asyncio.wait_for needs a coroutine, not an awaitable."""
    return await response
