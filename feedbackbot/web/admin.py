"""The admin view at `/admin`: recent feedback with filters, a chart by day, dead outbox entries.

The gateway lets only the analyst and admin roles reach these routes and sends the role in
X-Feedbackbot-Role. Only admins see the dead outbox entries and their retry buttons. The
gateway also rejects a retry posted by an analyst.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import ray.exceptions
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from feedbackbot.errors import StoreError, error_summary
from feedbackbot.http_api import await_within
from feedbackbot.web.pages import render
from models.feedback import FeedbackRecord, OutboxEntry
from models.listing import DailyVolume, FeedbackQuery

logger = logging.getLogger("ray.serve")

ROLE_HEADER = "X-Feedbackbot-Role"
SENTIMENTS = ("positive", "neutral", "negative", "pending")
LIST_LIMIT = 100
DEAD_LIMIT = 100
# Without a start date the chart covers this many days up to today.
DEFAULT_CHART_DAYS = 30
# More bars than this would be about a pixel wide on a phone, so a longer range shows only
# its last MAX_CHART_DAYS days.
MAX_CHART_DAYS = 366
TEXT_PREVIEW_CHARS = 300

CHART_WIDTH = 640
CHART_HEIGHT = 180
# Space above the tallest bar, in the chart's units.
CHART_HEADROOM = 10
# Bottom to top; colours chosen for at least 3:1 contrast against the white background.
CHART_SERIES = (
    ("negative", "#b42318"),
    ("neutral", "#5d6b82"),
    ("positive", "#127a3e"),
    ("pending", "#b54708"),
)


@dataclass
class AdminView:
    """Filters of one admin page request, as entered and as parsed."""

    entered: dict[str, str]
    query: FeedbackQuery
    chart_start: date
    chart_end: date
    problems: list[str] = field(default_factory=list)


def parse_filters(params: dict[str, str], today: date) -> AdminView:
    """Parse the filter fields of the page; an invalid field is reported and ignored."""
    entered = {name: params.get(name, "").strip() for name in ("rating", "sentiment", "from", "to")}
    problems: list[str] = []
    rating = None
    sentiment = None

    if entered["rating"]:
        if entered["rating"] in {"1", "2", "3", "4", "5"}:
            rating = int(entered["rating"])
        else:
            problems.append(f"Rating must be a whole number from 1 to 5; got {entered['rating']!r}. Showing every rating.")
    if entered["sentiment"]:
        if entered["sentiment"] in SENTIMENTS:
            sentiment = entered["sentiment"]
        else:
            problems.append(
                f"Sentiment must be one of {', '.join(SENTIMENTS)}; got {entered['sentiment']!r}. Showing every sentiment."
            )
    first_day = _parse_day(entered["from"], "From", problems)
    last_day = _parse_day(entered["to"], "To", problems)
    if first_day and last_day and first_day > last_day:
        problems.append("The From date is after the To date, so nothing can match; swap them.")

    query = FeedbackQuery(
        rating=rating,
        sentiment=sentiment,
        since=_start_of(first_day) if first_day else None,
        until=_start_of(last_day + timedelta(days=1)) if last_day else None,
        limit=LIST_LIMIT,
    )
    chart_end = last_day or today
    chart_start = first_day or chart_end - timedelta(days=DEFAULT_CHART_DAYS - 1)
    chart_start = max(chart_start, chart_end - timedelta(days=MAX_CHART_DAYS - 1))
    return AdminView(entered, query, chart_start, chart_end, problems)


def _parse_day(text: str, label: str, problems: list[str]) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        problems.append(f"{label} must be a date as YYYY-MM-DD; got {text!r}. The filter is ignored.")
        return None


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


async def admin_page(request: Request, persistence: DeploymentHandle, timeout_s: float) -> HTMLResponse:
    """Render the admin page from the listing, the per-day counts and, for admins, the dead entries."""
    role = request.headers.get(ROLE_HEADER, "")
    view = parse_filters(dict(request.query_params), datetime.now(timezone.utc).date())
    chart_query = view.query.model_copy(update={"since": _start_of(view.chart_start), "until": _start_of(view.chart_end + timedelta(days=1))})

    try:
        records, days, dead = await asyncio.gather(
            await_within(persistence.list_feedback.remote(view.query), timeout_s),
            await_within(persistence.daily_volume.remote(chart_query), timeout_s),
            _dead_entries(persistence, role, timeout_s),
        )
    except (asyncio.TimeoutError, StoreError, BackPressureError, ray.exceptions.RayError) as error:
        logger.error("The admin page could not read the database: %s", error_summary(error))
        return render(
            request,
            "unavailable.html",
            status_code=503,
            message="The database could not be read right now; reload the page in a few seconds.",
        )

    return render(
        request,
        "admin.html",
        role=role,
        view=view,
        records=[_row(record) for record in records],
        chart=chart(days, view.chart_start, view.chart_end),
        dead=dead,
        notice=_notice(request),
        sentiments=SENTIMENTS,
    )


async def _dead_entries(persistence: DeploymentHandle, role: str, timeout_s: float) -> list[OutboxEntry] | None:
    if role != "admin":
        return None
    return await await_within(persistence.list_outbox.remote("dead", DEAD_LIMIT), timeout_s)


def _notice(request: Request) -> str | None:
    retried = request.query_params.get("retried")
    missing = request.query_params.get("retry-missing")
    if retried:
        return f"Outbox entry {retried} is pending again and will be sent shortly."
    if missing:
        return f"Outbox entry {missing} is no longer dead (already retried or sent), so nothing was changed."
    return None


def _row(record: FeedbackRecord) -> dict[str, Any]:
    text = record.feedback_text
    preview = text if text is None or len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "…"
    return {
        "id": str(record.id),
        "received_at": record.received_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rating": record.rating,
        "sentiment": record.sentiment_label or "pending",
        "score": None if record.sentiment_score is None else f"{record.sentiment_score:.2f}",
        "name": record.customer_name,
        "email": record.customer_email,
        "text": text,
        "preview": preview,
        "truncated": text is not None and preview != text,
    }


def chart(days: list[DailyVolume], start: date, end: date) -> dict[str, Any]:
    """Lay out stacked bars per day, one colour per sentiment, with every day of the range."""
    by_day = {entry.day: entry for entry in days}
    count = (end - start).days + 1
    every_day = [start + timedelta(days=offset) for offset in range(count)]
    peak = max((entry.total for entry in days), default=0)
    scale = (CHART_HEIGHT - CHART_HEADROOM) / peak if peak else 0.0
    slot = CHART_WIDTH / count
    bar_width = max(slot * 0.8, 0.5)

    bars = []
    for index, day in enumerate(every_day):
        entry = by_day.get(day)
        top = float(CHART_HEIGHT)
        segments = []
        for name, colour in CHART_SERIES:
            value = getattr(entry, name) if entry else 0
            if value:
                height = value * scale
                top -= height
                segments.append({"name": name, "colour": colour, "y": round(top, 2), "height": round(height, 2), "value": value})
        bars.append(
            {
                "day": day.isoformat(),
                "x": round(index * slot + (slot - bar_width) / 2, 2),
                "width": round(bar_width, 2),
                "segments": segments,
                "total": entry.total if entry else 0,
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bars": bars,
        "peak": peak,
        "series": CHART_SERIES,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "table": [entry for entry in days],
    }


async def retry(request: Request, entry_id: uuid.UUID, persistence: DeploymentHandle, timeout_s: float) -> HTMLResponse | RedirectResponse:
    """Queue a dead outbox entry again and go back to the admin page, which reports the result."""
    try:
        entry: OutboxEntry | None = await await_within(persistence.requeue_notification.remote(entry_id), timeout_s)
    except (asyncio.TimeoutError, StoreError, BackPressureError, ray.exceptions.RayError) as error:
        logger.error("Retry of outbox entry %s from the admin page failed: %s", entry_id, error_summary(error))
        return render(
            request,
            "unavailable.html",
            status_code=503,
            message=f"Outbox entry {entry_id} could not be queued again right now; go back and press Retry again in a few seconds.",
        )

    # 303 so that a reload of the admin page afterwards does not post the retry again.
    if entry is None:
        return RedirectResponse(f"/admin?retry-missing={entry_id}#outbox", status_code=303)
    logger.info("Outbox entry %s queued again from the admin page", entry_id)
    return RedirectResponse(f"/admin?retried={entry_id}#outbox", status_code=303)


def sign_in_page(request: Request) -> HTMLResponse:
    """Render the sign-in form with the message named by the `error` parameter of the gateway's redirect."""
    messages = {
        "unknown-key": "That key is unknown or revoked. Check it and sign in again.",
        "missing-key": "Enter your API key to sign in.",
        "role": "That key has the submit role, which cannot open the admin pages. Use an analyst or admin key.",
    }
    error = messages.get(request.query_params.get("error", ""))
    signed_out = "signed-out" in request.query_params
    return render(request, "sign_in.html", error=error, signed_out=signed_out)
