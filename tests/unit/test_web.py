"""The browser pages without a browser: escaping, spam checks, filters, the chart, and the
store queries behind the admin page (real DuckDB file)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from starlette.requests import Request

from feedbackbot.store import FeedbackStore
from feedbackbot.web import admin, form, pages
from models.feedback import FeedbackRecord, FeedbackSubmission
from models.listing import DailyVolume, FeedbackQuery

HOSTILE = "<script>alert('x')</script>&<b>"


def make_request(path: str = "/", query: bytes = b"") -> Request:
    headers = [(b"x-request-id", b"unit-test-request")]
    return Request({"type": "http", "method": "GET", "path": path, "query_string": query, "headers": headers})


def make_record(day: datetime, **changes: object) -> FeedbackRecord:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "received_at": day,
        "request_id": "req-" + uuid.uuid4().hex[:8],
        "customer_name": "Ada",
        "customer_email": "ada@example.com",
        "feedback_text": "Delivery was quick.",
        "rating": 4,
        "sentiment_label": "positive",
        "sentiment_score": 0.9,
        "model_version": "test-model",
    }
    values.update(changes)
    return FeedbackRecord(**values)


def test_form_page_escapes_values():
    response = form.form_page(make_request(), values={"customer_name": HOSTILE}, errors={"customer_email": HOSTILE})
    html = response.body.decode()

    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&lt;b&gt;" in html


def test_form_page_headers():
    response = form.form_page(make_request())

    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert 'name="form_key"' in response.body.decode()


def test_form_pages_draw_new_keys():
    first = form.form_page(make_request()).body.decode()
    second = form.form_page(make_request()).body.decode()

    def key_of(html: str) -> str:
        return html.split('name="form_key" value="', 1)[1].split('"', 1)[0]

    assert key_of(first) != key_of(second)


@pytest.mark.parametrize(
    ("honeypot", "started_ms", "expected"),
    [
        ("http://spam.example", "1000", "the hidden field is filled"),
        ("", "", "the start time is missing or not a number"),
        ("", "12a", "the start time is missing or not a number"),
        ("", "9" * 16, "the start time is missing or not a number"),
        ("", str(200_000 * 1000), "the start time is in the future"),
        ("", str(99_999 * 1000), "it was sent 1.0 s after the page was rendered"),
    ],
)
def test_spam_reason_rejects(honeypot, started_ms, expected):
    assert form.spam_reason(honeypot, started_ms, now_s=100_000.0) == expected


def test_spam_reason_accepts_slow_person():
    assert form.spam_reason("", str(90_000 * 1000), now_s=100_000.0) is None


def test_form_claim_scope_and_fingerprint():
    submission = FeedbackSubmission(
        customer_name="Ada", customer_email="ada@example.com", feedback_text="Delivery was quick.", rating=5
    )
    claim = form.form_claim("key-1", submission)
    other = form.form_claim("key-1", submission.model_copy(update={"rating": 4}))

    assert claim.scope == form.WEB_FORM_SCOPE
    assert claim.key == "key-1"
    assert claim.body_sha256 != other.body_sha256


def test_filters_parse_valid():
    view = admin.parse_filters({"rating": "2", "sentiment": "pending", "from": "2026-12-01", "to": "2026-12-03"}, date(2026, 12, 5))

    assert view.problems == []
    assert view.query.rating == 2
    assert view.query.sentiment == "pending"
    assert view.query.since == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert view.query.until == datetime(2026, 12, 4, tzinfo=timezone.utc)
    assert (view.chart_start, view.chart_end) == (date(2026, 12, 1), date(2026, 12, 3))


def test_filters_report_invalid_fields():
    view = admin.parse_filters({"rating": "9", "sentiment": "angry", "from": "yesterday"}, date(2026, 12, 5))

    assert len(view.problems) == 3
    assert view.query.rating is None
    assert view.query.sentiment is None
    assert view.query.since is None
    assert view.chart_start == date(2026, 12, 5) - timedelta(days=admin.DEFAULT_CHART_DAYS - 1)


def test_chart_stacks_and_fills_days():
    days = [DailyVolume(day=date(2026, 12, 2), total=4, positive=2, neutral=0, negative=1, pending=1)]
    layout = admin.chart(days, date(2026, 12, 1), date(2026, 12, 3))

    assert [bar["day"] for bar in layout["bars"]] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert layout["bars"][0]["segments"] == []
    segments = layout["bars"][1]["segments"]
    assert [segment["name"] for segment in segments] == ["negative", "positive", "pending"]
    assert sum(segment["height"] for segment in segments) == pytest.approx(admin.CHART_HEIGHT - admin.CHART_HEADROOM)


def test_admin_template_escapes_rows():
    record = make_record(datetime(2026, 12, 2, tzinfo=timezone.utc), feedback_text=HOSTILE * 3, customer_name=HOSTILE)
    view = admin.parse_filters({}, date(2026, 12, 5))
    html = pages.render(
        make_request("/admin"),
        "admin.html",
        role="admin",
        view=view,
        records=[admin._row(record)],
        chart=admin.chart([], view.chart_start, view.chart_end),
        dead=[],
        notice=None,
        sentiments=admin.SENTIMENTS,
    ).body.decode()

    assert "<script>alert" not in html
    assert "&lt;script&gt;" in html


def test_static_asset_rejects_unknown_name():
    assert pages.static_asset("site.css").status_code == 200
    assert pages.static_asset("../pages.py").status_code == 404


@pytest.fixture
def store(tmp_path: Path):
    opened = FeedbackStore.open(tmp_path / "feedback.duckdb")
    yield opened
    opened.close()


def test_store_lists_with_filters(store):
    base = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)
    records = [
        make_record(base, rating=1, sentiment_label="negative", sentiment_score=0.1),
        make_record(base + timedelta(days=1), rating=5),
        make_record(base + timedelta(days=2), rating=5, sentiment_label=None, sentiment_score=None, model_version=None),
    ]
    store.insert_many(records)

    newest_first = store.list_feedback(FeedbackQuery())
    assert [record.id for record in newest_first] == [records[2].id, records[1].id, records[0].id]
    assert [record.id for record in store.list_feedback(FeedbackQuery(rating=1))] == [records[0].id]
    assert [record.id for record in store.list_feedback(FeedbackQuery(sentiment="pending"))] == [records[2].id]
    assert [record.id for record in store.list_feedback(FeedbackQuery(sentiment="positive"))] == [records[1].id]
    window = FeedbackQuery(since=base + timedelta(days=1), until=base + timedelta(days=2))
    assert [record.id for record in store.list_feedback(window)] == [records[1].id]
    assert len(store.list_feedback(FeedbackQuery(limit=2))) == 2


def test_store_counts_per_day(store):
    base = datetime(2026, 12, 1, 23, 30, tzinfo=timezone.utc)
    store.insert_many(
        [
            make_record(base),
            make_record(base, sentiment_label="negative", sentiment_score=0.2),
            make_record(base + timedelta(hours=1), sentiment_label=None, sentiment_score=None, model_version=None),
        ]
    )

    days = store.daily_volume(FeedbackQuery())

    assert days == [
        DailyVolume(day=date(2026, 12, 1), total=2, positive=1, neutral=0, negative=1, pending=0),
        DailyVolume(day=date(2026, 12, 2), total=1, positive=0, neutral=0, negative=0, pending=1),
    ]
