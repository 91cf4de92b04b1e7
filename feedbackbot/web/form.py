"""The public feedback form at `/`: rendering, spam checks, idempotency and the result pages.

A form post carries the four fields of `POST /v1/feedback` plus three of the form's own:

- `form_key`: a random idempotency key drawn when the page is rendered. A double click, a
  reload of the result page or a retry after a 503 sends the same key, so the submission
  is stored once and every repeat shows the same thank-you page.
- `website`: a honeypot, hidden from people and screen readers; bots that fill every field
  fill it too.
- `form_started_ms`: when the page was rendered (Unix time in milliseconds). A post sooner
  than MIN_FILL_S after that is taken for a bot.

A post that fails a spam check gets the same thank-you page as a real one, without a
reference, and nothing is stored, so a bot learns nothing about the check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse

from feedbackbot.http_api import IDEMPOTENCY_KEY_PATTERN, form_payload
from feedbackbot.web.pages import render
from models.feedback import FeedbackSubmission, IdempotencyClaim

logger = logging.getLogger("ray.serve")

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
# Idempotency keys of the form are scoped to this fixed id instead of an API key's id, so
# they never match keys that API clients send.
WEB_FORM_SCOPE = "web-form"
HONEYPOT_FIELD = "website"
STARTED_FIELD = "form_started_ms"
FORM_KEY_FIELD = "form_key"
# People need longer than this to type a name, an address and ten characters of text; form
# bots post at once. NOTE: the start time is not signed, so a bot that reads the page and
# waits, or rewrites the field, passes. The honeypot and the gateway's per-address rate
# limit still apply to such a bot.
MIN_FILL_S = 2.0
# A start time this far in the future means a forged field, not a clock difference: the
# same replica set renders and checks it.
MAX_CLOCK_SKEW_S = 60.0
FIELDS = ("customer_name", "customer_email", "rating", "feedback_text")

# Runs the ingest pipeline on a payload: (request, payload, from_form, claim_of) -> JSON response.
Pipeline = Callable[
    [Request, dict[str, Any], bool, Callable[[Request, FeedbackSubmission], IdempotencyClaim | None]],
    Awaitable[JSONResponse],
]


@dataclass
class FormPost:
    """One decoded post of the form."""

    payload: dict[str, Any]
    form_key: str | None
    started_ms: str
    spam_reason: str | None = None
    problems: list[str] = field(default_factory=list)


def form_page(
    request: Request,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    problems: list[str] | None = None,
    form_key: str | None = None,
    started_ms: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """Render the form, empty with a fresh key, or again with the values and errors of a post."""
    return render(
        request,
        "form.html",
        status_code=status_code,
        values={name: str((values or {}).get(name, "")) for name in FIELDS},
        errors=errors or {},
        problems=problems or [],
        form_key=form_key or uuid.uuid4().hex,
        started_ms=started_ms or str(int(time.time() * 1000)),
        honeypot_field=HONEYPOT_FIELD,
    )


async def submit(request: Request, pipeline: Pipeline) -> HTMLResponse:
    """Handle a post of the form: spam checks, then the API's pipeline, then a page for its outcome."""
    post = await read_post(request)
    if post.problems:
        return form_page(request, values=post.payload, problems=post.problems, status_code=400)

    if post.spam_reason is not None:
        # Logged without any field, because a bot's text is often the spam itself.
        logger.info("Dropped a web form post as spam: %s", post.spam_reason)
        return render(request, "thanks.html", feedback_id=None)

    key = post.form_key

    def claim_of(_: Request, submission: FeedbackSubmission) -> IdempotencyClaim | None:
        return None if key is None else form_claim(key, submission)

    response = await pipeline(request, post.payload, True, claim_of)
    return outcome_page(request, post, response)


async def read_post(request: Request) -> FormPost:
    """Decode the form body and split the API fields from the form's own fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return FormPost({}, None, "", problems=[f"The form must be sent as {FORM_TYPE}; reload the page and send it again."])
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return FormPost({}, None, "", problems=[f"The form has {len(body)} bytes, more than {MAX_FORM_BYTES}; shorten the text."])

    form = await request.form()
    payload, duplicates = form_payload(form.multi_items())
    honeypot = str(payload.pop(HONEYPOT_FIELD, ""))
    started_ms = str(payload.pop(STARTED_FIELD, ""))
    form_key = str(payload.pop(FORM_KEY_FIELD, "")) or None
    if form_key is not None and not IDEMPOTENCY_KEY_PATTERN.match(form_key):
        # Only a changed page sends such a key; the post is still stored, without the
        # protection against repeats.
        form_key = None

    post = FormPost(payload, form_key, started_ms, spam_reason=spam_reason(honeypot, started_ms, time.time()))
    if duplicates:
        post.problems.append(f"The form repeats {', '.join(duplicates)}; reload the page and send it again.")
    return post


def spam_reason(honeypot: str, started_ms: str, now_s: float) -> str | None:
    """Return why a post looks like a bot's, or None for a post that passes the checks."""
    if honeypot:
        return "the hidden field is filled"
    if not started_ms.isascii() or not started_ms.isdigit() or len(started_ms) > 15:
        return "the start time is missing or not a number"

    elapsed_s = now_s - int(started_ms) / 1000
    if elapsed_s < -MAX_CLOCK_SKEW_S:
        return "the start time is in the future"
    if elapsed_s < MIN_FILL_S:
        return f"it was sent {max(elapsed_s, 0):.1f} s after the page was rendered"
    return None


def form_claim(key: str, submission: FeedbackSubmission) -> IdempotencyClaim:
    """Return the idempotency claim of a form post, fingerprinted like an API claim."""
    canonical = json.dumps(submission.model_dump(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return IdempotencyClaim(key=key, scope=WEB_FORM_SCOPE, body_sha256=hashlib.sha256(canonical.encode()).hexdigest())


def outcome_page(request: Request, post: FormPost, response: JSONResponse) -> HTMLResponse:
    """Turn the pipeline's JSON response into the thank-you page or the form with its errors."""
    body = json.loads(bytes(response.body))
    if response.status_code == 201:
        return render(request, "thanks.html", feedback_id=body["id"])

    error = body.get("error", {})
    if response.status_code == 422:
        errors: dict[str, str] = {}
        problems: list[str] = []
        for item in error.get("fields", []):
            if item["field"] in FIELDS:
                errors.setdefault(item["field"], item["message"])
            else:
                problems.append(item["message"])
        return form_page(
            request,
            values=post.payload,
            errors=errors,
            problems=problems,
            form_key=post.form_key,
            started_ms=post.started_ms,
            status_code=422,
        )

    if response.status_code == 409:
        # The key was used for other feedback, because the page was edited and posted again
        # after a success. A fresh key lets this text through as a new submission.
        problem = "This form was already sent with other feedback. Check your entries and send them again."
        return form_page(request, values=post.payload, problems=[problem], started_ms=post.started_ms, status_code=409)

    # 503 and anything else: the same key stays, so sending again cannot store twice.
    problem = error.get("message", "The feedback could not be stored; send it again in a few seconds.")
    return form_page(
        request,
        values=post.payload,
        problems=[problem],
        form_key=post.form_key,
        started_ms=post.started_ms,
        status_code=response.status_code,
    )
