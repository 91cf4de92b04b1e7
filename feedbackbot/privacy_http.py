"""Request parsing of the privacy admin routes, with the common JSON error shape."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from feedbackbot.http_api import error_response, parse_json_object
from models.feedback import FieldError
from models.privacy import REASON_MAX_CHARS, PrivacyRequest

MAX_PRIVACY_BODY_BYTES = 16 * 1024
JSON_TYPE = "application/json"

PrivacyRequestT = TypeVar("PrivacyRequestT", bound=PrivacyRequest)


async def read_privacy_request(request: Request, model: type[PrivacyRequestT]) -> PrivacyRequestT | JSONResponse:
    """Return the validated JSON body as `model`, or the 413, 415 or 422 error response."""
    body = await request.body()
    if len(body) > MAX_PRIVACY_BODY_BYTES:
        return error_response(
            request, 413, "payload_too_large", f"The body has {len(body)} bytes; send at most {MAX_PRIVACY_BODY_BYTES}."
        )

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        return error_response(
            request,
            415,
            "unsupported_media_type",
            f"Content-Type {content_type!r} is not supported; send {JSON_TYPE} with the address in the body.",
        )

    try:
        payload = parse_json_object(body)
    except (ValueError, UnicodeDecodeError) as error:
        return _invalid(request, [FieldError(field="body", message=f"The body is not valid JSON: {error}. Send a JSON object.")])
    if not isinstance(payload, dict):
        fields = ", ".join(model.model_fields)
        return _invalid(request, [FieldError(field="body", message=f"The body must be a JSON object with the fields {fields}.")])

    try:
        return model.model_validate(payload)
    except ValidationError as error:
        return _invalid(request, [_explain(item, model) for item in error.errors()])


def _invalid(request: Request, fields: list[FieldError]) -> JSONResponse:
    return error_response(
        request, 422, "validation_failed", f"{len(fields)} field(s) are invalid; fix them and send the request again.", fields=fields
    )


def _explain(item: dict[str, Any], model: type[PrivacyRequest]) -> FieldError:
    """Turn one pydantic error into a message that names the field and the fix."""
    field = str((item.get("loc") or ("body",))[0])
    kind = item["type"]

    if kind == "missing":
        return FieldError(field=field, message=f"{field} is required; add it to the JSON body.")
    if kind == "extra_forbidden":
        return FieldError(field=field, message=f"Unknown field {field}; send only {', '.join(model.model_fields)}.")
    if kind in {"string_type", "string_sub_type"}:
        return FieldError(field=field, message=f"{field} must be a JSON string.")
    if field == "email":
        reason = str(item.get("ctx", {}).get("error", item["msg"]))
        return FieldError(field=field, message=f"email is not a valid email address: {reason}")
    if field == "reason" and kind == "string_too_short":
        return FieldError(field=field, message="reason is empty; leave it out or describe why the data is erased.")
    if field == "reason" and kind == "string_too_long":
        return FieldError(field=field, message=f"reason is too long; shorten it to at most {REASON_MAX_CHARS} characters.")
    return FieldError(field=field, message=f"{field} is invalid: {item['msg']}.")
