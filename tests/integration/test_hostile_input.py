"""Hostile and unusual input through the gateway: stored verbatim, returned as JSON data, mailed
as plain text, and never a 5xx.

SQL fragments, markup and script text are data to this service: the SQL is parameterised, the
API returns JSON, and the mail goes out as text/plain. These tests store such text, read it
back, look at the mail the sink received and, after shutdown, at the DuckDB file itself.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import Phase, given, settings

from tests.integration.conftest import ADMIN_ADDRESS, Stack, mail_text
from tests.integration.roundtrip import check_and_record, expected_record, read_back, wait_for_confirmations
from tests.unit.test_validation_properties import valid_submissions

pytestmark = pytest.mark.integration

HOSTILE_TEXTS = {
    "sql": "Great shop'); DROP TABLE feedback; -- and ' OR '1'='1",
    "duckdb": "'; COPY feedback TO '/tmp/stolen.csv'; ATTACH '/tmp/x.db'; --",
    "script": "<script>alert(1)</script> the parcel was fine",
    "img": '<img src=x onerror="alert(document.cookie)"> nice service',
    "json": '"}, "rating": 5, "extra": {"a": "\\" still text',
    "templates": "${jndi:ldap://127.0.0.1/a} {{7*7}} %s %n %00 \\u0000 text",
}
HOSTILE_NAMES = {
    "sql": "Robert'); DROP TABLE feedback;--",
    "duckdb": "x' OR 1=1; --",
    "script": "<script>alert('name')</script>",
    "img": "<img src=x onerror=alert(1)>",
    "json": '"}{"',
    "templates": "{{name}} ${name}",
}
# Rows that the after-shutdown check looks for in DuckDB: id -> the fields as sent.
hostile_rows: dict[str, dict[str, Any]] = {}
generated_ids: set[str] = set()


def hostile_submission(case: str) -> dict[str, Any]:
    return {
        "customer_name": HOSTILE_NAMES[case],
        "customer_email": f"hostile.{case}.{uuid.uuid4().hex[:8]}@example.com",
        "feedback_text": HOSTILE_TEXTS[case],
        # A rating of 1 owes an admin alert, which carries the feedback text.
        "rating": 1,
    }


def post_feedback(stack: Stack, **kwargs: Any):
    with stack.client(stack.keys.admin) as client:
        return client.post("/v1/feedback", **kwargs)


def assert_no_html_part(message) -> None:
    types = [part.get_content_type() for part in message.walk()]
    assert "text/html" not in types, f"the mail has an HTML part: {types}"
    assert message.get_content_type() == "text/plain"


@pytest.mark.parametrize("case", sorted(HOSTILE_TEXTS))
def test_hostile_text_stored_verbatim(stack: Stack, case: str) -> None:
    payload = hostile_submission(case)

    response = post_feedback(stack, json=payload)

    assert response.status_code == 201, response.text
    feedback_id = response.json()["id"]
    stored = check_and_record(stack, feedback_id, payload, response.headers["X-Request-ID"])
    assert stored["customer_name"] == payload["customer_name"]
    assert stored["feedback_text"] == payload["feedback_text"]
    hostile_rows[feedback_id] = payload


def test_hostile_form_post_stored_verbatim(stack: Stack) -> None:
    payload = {**hostile_submission("script"), "rating": "1"}

    response = post_feedback(stack, data=payload)

    assert response.status_code == 201, response.text
    feedback_id = response.json()["id"]
    stored = check_and_record(stack, feedback_id, payload, response.headers["X-Request-ID"], from_form=True)
    assert stored["feedback_text"] == payload["feedback_text"]
    hostile_rows[feedback_id] = {**payload, "rating": 1}


def test_markup_returned_as_json_data(stack: Stack) -> None:
    payload = hostile_submission("img")
    response = post_feedback(stack, json=payload)
    assert response.status_code == 201, response.text
    feedback_id = response.json()["id"]
    check_and_record(stack, feedback_id, payload, response.headers["X-Request-ID"])
    hostile_rows[feedback_id] = payload

    with stack.client(stack.keys.admin) as client:
        stored = client.get(f"/v1/feedback/{feedback_id}")

    # The markup is a JSON string value inside an application/json body, which a browser
    # does not render. The raw body decodes back to the exact text.
    assert stored.headers["content-type"].split(";")[0] == "application/json"
    assert not stored.text.lstrip().startswith("<")
    assert json.loads(stored.content)["feedback_text"] == payload["feedback_text"]


def test_hostile_text_mailed_as_plain_text(stack: Stack) -> None:
    assert hostile_rows, "the hostile submissions above stored nothing"

    def all_delivered(mails) -> bool:
        confirmed = {fid for fid in hostile_rows for mail in mails if fid in mail_text(mail) and mail["To"] != ADMIN_ADDRESS}
        alerted = {fid for fid in hostile_rows for mail in mails if mail["To"] == ADMIN_ADDRESS and fid in mail["Subject"]}
        return confirmed == set(hostile_rows) and alerted == set(hostile_rows)

    messages = stack.wait_for_mail(all_delivered, timeout_s=120.0)

    for feedback_id, payload in hostile_rows.items():
        confirmation = next(m for m in messages if m["To"] != ADMIN_ADDRESS and feedback_id in mail_text(m))
        alert = next(m for m in messages if m["To"] == ADMIN_ADDRESS and feedback_id in m["Subject"])
        assert_no_html_part(confirmation)
        assert_no_html_part(alert)
        assert confirmation["To"] == payload["customer_email"]
        assert f"Hello {payload['customer_name']}," in mail_text(confirmation)
        assert payload["feedback_text"] in mail_text(alert)
        assert f"Customer: {payload['customer_name']} <{payload['customer_email']}>" in mail_text(alert)


def test_tables_intact_after_sql_text(stack: Stack) -> None:
    assert hostile_rows, "the hostile submissions above stored nothing"

    # Each read goes through persistence's SELECT on the feedback table, which would fail
    # if any stored text had been run as SQL.
    for feedback_id, payload in hostile_rows.items():
        assert read_back(stack, feedback_id)["feedback_text"] == payload["feedback_text"]
    with stack.client(stack.keys.admin) as client:
        outbox = client.get("/v1/admin/outbox", params={"status": "sent", "limit": 10})
    assert outbox.status_code == 200, outbox.text


@settings(max_examples=20, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(payload=valid_submissions)
def test_generated_submissions_stored_as_rules_say(stack: Stack, payload: dict[str, Any]) -> None:
    response = post_feedback(stack, json=payload)

    assert response.status_code == 201, response.text
    feedback_id = response.json()["id"]
    check_and_record(stack, feedback_id, payload, response.headers["X-Request-ID"])
    generated_ids.add(feedback_id)


def test_generated_submissions_confirmed(stack: Stack) -> None:
    # Unicode names and addresses must reach the sink too, or their outbox entries die.
    assert generated_ids
    wait_for_confirmations(stack, generated_ids)


def test_crlf_stored_as_lf(stack: Stack) -> None:
    payload = {
        "customer_name": "  \u202eCRLF  ",
        "customer_email": f"crlf.{uuid.uuid4().hex[:8]}@example.com",
        "feedback_text": "\r\n first line\r\nsecond line\tindented\r\n\r\n",
        "rating": 4,
    }

    response = post_feedback(stack, json=payload)

    assert response.status_code == 201, response.text
    stored = check_and_record(stack, response.json()["id"], payload, response.headers["X-Request-ID"])
    assert stored["feedback_text"] == "first line\nsecond line\tindented"
    assert stored["customer_name"] == "\u202eCRLF"


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("100000 open brackets", b"[" * 100_000),
        ("100000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ],
)
def test_deeply_nested_json_rejected(stack: Stack, case: str, body: bytes) -> None:
    with stack.client(stack.keys.admin) as client:
        # Both bodies are over the 64 KiB limit of a single submission, so that route gets their
        # first 60 KiB, which still nest too deeply. The batch route takes up to 4 MiB.
        response = client.post("/v1/feedback", content=body[: 60 * 1024], headers={"Content-Type": "application/json"})
        batch = client.post("/v1/feedback:batch", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"] == "body"
    assert batch.status_code == 422, batch.text
    assert batch.json()["error"]["fields"][0]["field"] == "body"


@pytest.mark.parametrize("depth", [100, 400, 900])
def test_nested_field_value_rejected(stack: Stack, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = (
        '{"customer_name": ' + nested + ', "customer_email": "ada@example.com", '
        '"feedback_text": "nested arrays in the name", "rating": 3}'
    ).encode()

    with stack.client(stack.keys.admin) as client:
        response = client.post("/v1/feedback", content=body, headers={"Content-Type": "application/json"})
        batch = client.post(
            "/v1/feedback:batch",
            content=b'{"submissions": [' + body + b"]}",
            headers={"Content-Type": "application/json"},
        )

    assert response.status_code == 422, response.text
    assert [field["field"] for field in response.json()["error"]["fields"]] == ["customer_name"]
    assert batch.status_code == 200, batch.text
    assert batch.json()["results"][0]["status"] == "rejected"


@pytest.mark.parametrize("field_name", ["customer_name", "customer_email", "feedback_text"])
def test_lone_surrogate_rejected(stack: Stack, field_name: str) -> None:
    payload = {
        "customer_name": "Ada",
        "customer_email": "ada@example.com",
        "feedback_text": "a lone surrogate escape",
        "rating": 3,
    }
    body = json.dumps(payload).replace(json.dumps(payload[field_name]), json.dumps(payload[field_name])[:-1] + '\\ud800"')

    with stack.client(stack.keys.admin) as client:
        response = client.post("/v1/feedback", content=body.encode(), headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    fields = response.json()["error"]["fields"]
    assert [field["field"] for field in fields] == [field_name]
    assert "unpaired surrogate" in fields[0]["message"]


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("rating with 5000 digits", '{"rating": ' + "9" * 5000 + "}"),
        ("rating 1e400", '{"rating": 1e400}'),
        ("rating -0", '{"rating": -0}'),
        ("text as object", '{"feedback_text": {"$gt": ""}}'),
        ("key with NUL", '{"\\u0000": 1}'),
        ("empty key", '{"": 1}'),
    ],
)
def test_odd_json_values_rejected(stack: Stack, case: str, raw: str) -> None:
    with stack.client(stack.keys.admin) as client:
        response = client.post("/v1/feedback", content=raw.encode(), headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    for field in error["fields"]:
        assert field["message"]


@pytest.mark.after_shutdown
def test_hostile_rows_verbatim_in_duckdb(stack: Stack) -> None:
    connection = stack.connect_db()
    tables = {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    rows = connection.execute(
        "SELECT id::VARCHAR, customer_name, feedback_text FROM feedback WHERE id::VARCHAR IN (SELECT unnest(?))",
        [list(hostile_rows)],
    ).fetchall()
    connection.close()

    assert {"feedback", "outbox"} <= tables
    stored = {row[0]: (row[1], row[2]) for row in rows}
    for feedback_id, payload in hostile_rows.items():
        expected = expected_record(payload)
        assert stored[feedback_id] == (expected["customer_name"], expected["feedback_text"])
