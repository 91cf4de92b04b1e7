"""Feedback through the whole stack: gateway -> Serve graph -> DuckDB -> mail sink."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import httpx
import pytest

from feedbackbot.notify import admin_target_id
from tests.integration.conftest import ADMIN_ADDRESS, DEAD_TARGET_URL, Stack, mail_text, read_mail

pytestmark = pytest.mark.integration


def unique_text(prefix: str) -> str:
    return f"{prefix} [marker {uuid.uuid4().hex}]"


def submission(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "customer_name": "Ada Lovelace",
        "customer_email": f"ada.{uuid.uuid4().hex[:8]}@example.com",
        "feedback_text": unique_text("The parcel arrived early and everything was perfect, thank you!"),
        "rating": 5,
    }
    payload.update(changes)
    return payload


def submit(stack: Stack, payload: object, **kwargs: object):
    with stack.client(stack.keys.submit) as client:
        return client.post("/v1/feedback", json=payload, **kwargs)


def record_accepted(stack: Stack, body: dict, payload: dict, request_id: str) -> None:
    stack.accepted[body["id"]] = {**payload, "request_id": request_id, "sentiment_label": body["sentiment"]["label"]}


def test_json_submit_stored_and_readable(stack: Stack) -> None:
    payload = submission()
    request_id = "test-" + uuid.uuid4().hex

    response = submit(stack, payload, headers={"X-Request-ID": request_id})

    assert response.status_code == 201, response.text
    body = response.json()
    record_accepted(stack, body, payload, request_id)
    assert response.headers["X-Request-ID"] == request_id
    assert response.headers["Location"] == f"/v1/feedback/{body['id']}"
    assert uuid.UUID(body["id"])
    assert datetime.fromisoformat(body["received_at"]).utcoffset().total_seconds() == 0
    assert body["sentiment"]["label"] == "positive"
    assert 0.0 <= body["sentiment"]["score"] <= 1.0

    with stack.client(stack.keys.admin) as client:
        stored = client.get(f"/v1/feedback/{body['id']}")

    assert stored.status_code == 200, stored.text
    record = stored.json()
    assert record["customer_name"] == payload["customer_name"]
    assert record["customer_email"] == payload["customer_email"]
    assert record["feedback_text"] == payload["feedback_text"]
    assert record["rating"] == 5
    assert record["request_id"] == request_id
    assert record["sentiment"] == body["sentiment"]
    assert record["model_version"].startswith("all-minilm-l6-v2+head-")


def test_negative_text_labelled_negative(stack: Stack) -> None:
    payload = submission(
        feedback_text="Terrible service. The order was late, broken, and support never answered.",
        rating=3,
    )

    response = submit(stack, payload)

    assert response.status_code == 201, response.text
    record_accepted(stack, response.json(), payload, response.headers["X-Request-ID"])
    assert response.json()["sentiment"]["label"] == "negative"
    assert response.json()["sentiment"]["score"] < 0.35


def test_form_post_accepted(stack: Stack) -> None:
    payload = submission(rating="4", feedback_text=unique_text("Sent from the web form,\r\nwith two lines."))

    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", data=payload)

    assert response.status_code == 201, response.text
    expected = {**payload, "rating": 4, "feedback_text": payload["feedback_text"].replace("\r\n", "\n")}
    record_accepted(stack, response.json(), expected, response.headers["X-Request-ID"])


def test_generated_request_id_stored(stack: Stack) -> None:
    payload = submission()

    response = submit(stack, payload)

    assert response.status_code == 201, response.text
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32
    record_accepted(stack, response.json(), payload, request_id)


BAD_JSON_BODIES = [
    ("rating 0", {"rating": 0}, ["rating"]),
    ("rating 6", {"rating": 6}, ["rating"]),
    ("rating 3.5", {"rating": 3.5}, ["rating"]),
    ("rating string", {"rating": "3"}, ["rating"]),
    ("rating true", {"rating": True}, ["rating"]),
    ("rating null", {"rating": None}, ["rating"]),
    ("empty name", {"customer_name": "  "}, ["customer_name"]),
    ("long name", {"customer_name": "x" * 201}, ["customer_name"]),
    ("bad email", {"customer_email": "not-an-address"}, ["customer_email"]),
    ("short text", {"feedback_text": "too short"}, ["feedback_text"]),
    ("control char", {"feedback_text": "bell \x07 in the feedback text"}, ["feedback_text"]),
    ("unknown field", {"coupon": "SAVE10"}, ["coupon"]),
    ("two bad fields", {"rating": 0, "customer_email": "x@"}, ["customer_email", "rating"]),
]


@pytest.mark.parametrize(("case", "changes", "fields"), BAD_JSON_BODIES, ids=[case for case, *_ in BAD_JSON_BODIES])
def test_bad_input_rejected_with_fields(stack: Stack, case: str, changes: dict, fields: list[str]) -> None:
    marker = f"rejected-{uuid.uuid4().hex}"
    payload = submission(customer_name=f"Reject {marker}")
    payload.update(changes)
    stack.rejected_markers.append(marker)

    response = submit(stack, payload)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert sorted(item["field"] for item in error["fields"]) == fields
    assert all(item["message"] for item in error["fields"])


def test_missing_field_rejected(stack: Stack) -> None:
    payload = submission()
    del payload["feedback_text"]

    response = submit(stack, payload)

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == [
        {"field": "feedback_text", "message": "feedback_text is required; add it to the request."}
    ]


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("not json", b"{not json"),
        ("array", b"[1, 2]"),
        ("string", b'"hello"'),
        ("duplicate key", b'{"rating": 5, "rating": 4}'),
        ("NaN rating", b'{"rating": NaN}'),
        ("invalid utf-8", b'{"customer_name": "\xff"}'),
    ],
)
def test_non_object_body_rejected(stack: Stack, case: str, raw: bytes) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert [item["field"] for item in error["fields"]] == ["body"]


def test_unsupported_content_type_rejected(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", content=b"rating=5", headers={"Content-Type": "text/plain"})

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_unknown_id_not_found(stack: Stack) -> None:
    with stack.client(stack.keys.admin) as client:
        response = client.get(f"/v1/feedback/{uuid.uuid4()}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_malformed_id_rejected(stack: Stack) -> None:
    with stack.client(stack.keys.admin) as client:
        response = client.get("/v1/feedback/not-a-uuid")

    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "feedback_id"


def test_health_reports_every_deployment(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/healthz")

    assert response.status_code == 200, response.text
    deployments = response.json()["deployments"]
    assert set(deployments) == {"ingest", "validation", "enrichment", "persistence", "notification"}
    assert {part["status"] for part in deployments.values()} == {"ok"}


def test_openapi_lists_routes(stack: Stack) -> None:
    with stack.client() as client:
        schema = client.get("/openapi.json").json()

    assert "/v1/feedback" in schema["paths"]
    assert "/v1/feedback/{feedback_id}" in schema["paths"]
    request_body = schema["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]
    assert set(request_body) == {"application/json", "application/x-www-form-urlencoded"}


def test_customer_confirmation_mailed(stack: Stack) -> None:
    payload = submission()
    response = submit(stack, payload)
    assert response.status_code == 201
    feedback_id = response.json()["id"]
    record_accepted(stack, response.json(), payload, response.headers["X-Request-ID"])

    def is_confirmation(mail) -> bool:
        return mail["To"] == payload["customer_email"] and feedback_id in mail_text(mail)

    messages = stack.wait_for_mail(lambda mails: any(is_confirmation(mail) for mail in mails))

    confirmation = next(mail for mail in messages if is_confirmation(mail))
    assert confirmation["Subject"] == "We received your feedback"
    assert "Ada Lovelace" in mail_text(confirmation)


def test_low_rating_alerts_admin(stack: Stack) -> None:
    payload = submission(rating=1, feedback_text=unique_text("Delivered to the wrong address twice."))
    response = submit(stack, payload)
    assert response.status_code == 201
    feedback_id = response.json()["id"]
    record_accepted(stack, response.json(), payload, response.headers["X-Request-ID"])

    messages = stack.wait_for_mail(
        lambda mails: any(mail["To"] == ADMIN_ADDRESS and feedback_id in mail["Subject"] for mail in mails)
    )

    alert = next(mail for mail in messages if mail["To"] == ADMIN_ADDRESS and feedback_id in mail["Subject"])
    assert "rating 1" in alert["Subject"]
    assert payload["feedback_text"] in mail_text(alert)


@pytest.mark.after_shutdown
def test_duckdb_holds_exactly_accepted_rows(stack: Stack) -> None:
    connection = stack.connect_db()
    rows = connection.execute(
        "SELECT id::VARCHAR, customer_name, customer_email, feedback_text, rating, request_id FROM feedback"
    ).fetchall()
    connection.close()

    stored = {row[0]: row[1:] for row in rows}
    for feedback_id, expected in stack.accepted.items():
        assert feedback_id in stored, f"accepted feedback {feedback_id} is missing from DuckDB"
        name, address, text, rating, request_id = stored[feedback_id]
        assert name == expected["customer_name"]
        assert address == expected["customer_email"]
        assert text == expected["feedback_text"]
        assert rating == int(expected["rating"])
        if expected["request_id"] is not None:
            assert request_id == expected["request_id"]
    assert len(rows) == len({row[0] for row in rows})
    unexpected = [stored[feedback_id] for feedback_id in set(stored) - set(stack.accepted)]
    assert unexpected == [], "rows stored that no test recorded as accepted"
    assert len(rows) == len(stack.accepted)


@pytest.mark.after_shutdown
def test_rejected_submissions_not_stored(stack: Stack) -> None:
    connection = stack.connect_db()
    names = [row[0] for row in connection.execute("SELECT customer_name FROM feedback").fetchall()]
    connection.close()

    assert stack.rejected_markers
    for marker in stack.rejected_markers:
        assert not any(marker in name for name in names)


@pytest.mark.after_shutdown
def test_admin_alerts_exactly_as_owed(stack: Stack) -> None:
    connection = stack.connect_db()
    rows = connection.execute("SELECT id::VARCHAR, rating, sentiment_label FROM feedback").fetchall()
    connection.close()
    alerts: dict[str, int] = {}
    for mail in read_mail(stack.mail_dir):
        if mail["To"] == ADMIN_ADDRESS:
            feedback_id = mail["Subject"].rsplit(": ", 1)[-1]
            alerts[feedback_id] = alerts.get(feedback_id, 0) + 1

    # The owed alerts follow from the final row, so sentiment found by late scoring counts.
    assert [row for row in rows if row[2] is None] == [], "rows were left without sentiment"
    expected = {feedback_id for feedback_id, rating, label in rows if rating <= 2 or label == "negative"}
    assert expected
    assert set(alerts) == expected
    assert {feedback_id for feedback_id, count in alerts.items() if count > 1} <= stack.chaos_ids


@pytest.mark.after_shutdown
def test_outbox_holds_what_each_row_owes(stack: Stack) -> None:
    connection = stack.connect_db()
    rows = connection.execute(
        "SELECT f.id::VARCHAR, f.rating, f.sentiment_label, "
        "count(*) FILTER (WHERE o.kind = 'confirmation'), count(*) FILTER (WHERE o.kind = 'admin_alert') "
        "FROM feedback f LEFT JOIN outbox o ON o.feedback_id = f.id GROUP BY ALL"
    ).fetchall()
    connection.close()

    wrong = [
        row
        for row in rows
        if row[3] != 1 or row[4] != (2 if row[1] <= 2 or row[2] == "negative" else 0)
    ]
    assert wrong == [], f"{len(wrong)} rows have other outbox entries than they owe, for example {wrong[:3]}"


def test_mail_outage_retried_from_outbox(stack: Stack) -> None:
    sink_pid_file = stack.service.config.run_dir / "mailsink.pid"
    stack.service._stop_pid_file(sink_pid_file, "mail sink")
    try:
        payload = submission(rating=2, feedback_text=unique_text("Sent while the mail server is down."))
        response = submit(stack, payload)
        assert response.status_code == 201, response.text
        feedback_id = response.json()["id"]
        record_accepted(stack, response.json(), payload, response.headers["X-Request-ID"])

        with stack.client(stack.keys.admin) as client:
            assert client.get(f"/v1/feedback/{feedback_id}").status_code == 200
        failure = stack.wait_for_log("Notification", f"Failed to send confirmation for feedback {feedback_id}")
    finally:
        stack.service._start_mail_sink()

    assert payload["customer_email"] not in failure
    stack.wait_for_mail(
        lambda mails: any(mail["To"] == payload["customer_email"] and feedback_id in mail_text(mail) for mail in mails)
    )
    stack.wait_for_mail(
        lambda mails: any(mail["To"] == ADMIN_ADDRESS and feedback_id in mail["Subject"] for mail in mails)
    )


def test_dead_entry_listed_and_requeued(stack: Stack) -> None:
    payload = submission(rating=1, feedback_text=unique_text("Nobody ever called me back."))
    response = submit(stack, payload)
    assert response.status_code == 201, response.text
    feedback_id = response.json()["id"]
    record_accepted(stack, response.json(), payload, response.headers["X-Request-ID"])
    dead_target = admin_target_id(DEAD_TARGET_URL)

    entry = wait_for_dead_entry(stack, feedback_id, dead_target)

    assert entry["attempts"] == 8
    assert entry["kind"] == "admin_alert"
    assert "127.0.0.1:9" in entry["last_error"]
    with stack.client(stack.keys.admin) as client:
        requeued = client.post(f"/v1/admin/outbox/{entry['id']}/retry")
        again = client.post(f"/v1/admin/outbox/{entry['id']}/retry")
    assert requeued.status_code == 200, requeued.text
    assert requeued.json()["status"] == "pending"
    assert requeued.json()["attempts"] == 0
    assert again.status_code in (200, 404)
    assert wait_for_dead_entry(stack, feedback_id, dead_target)["id"] == entry["id"]


def test_outbox_routes_need_admin(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        listing = client.get("/v1/admin/outbox")
    with stack.client(stack.keys.admin) as client:
        unknown = client.post(f"/v1/admin/outbox/{uuid.uuid4()}/retry")
        bad_status = client.get("/v1/admin/outbox", params={"status": "lost"})

    assert listing.status_code == 403
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert bad_status.status_code == 422


def wait_for_dead_entry(stack: Stack, feedback_id: str, target: str, timeout_s: float = 180.0) -> dict:
    # Each dead-target alert of the earlier tests is retried 8 times with the circuit breaker
    # off, so this entry's tries can queue behind a minute or more of such retries.
    deadline = time.monotonic() + timeout_s
    with stack.client(stack.keys.admin) as client:
        while time.monotonic() < deadline:
            listing = client.get("/v1/admin/outbox", params={"status": "dead", "limit": 1000})
            assert listing.status_code == 200, listing.text
            for entry in listing.json():
                if entry["feedback_id"] == feedback_id and entry["target"] == target:
                    return entry
            time.sleep(0.3)
    pytest.fail(f"No dead outbox entry for feedback {feedback_id} within {timeout_s} s")


def test_dashboard_requires_ray_token(stack: Stack) -> None:
    dashboard = stack.service.config.dashboard_url
    token = stack.service.config.token_file.read_text().strip()

    anonymous = httpx.get(f"{dashboard}/api/serve/applications/", timeout=30.0)
    with_token = httpx.get(
        f"{dashboard}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"}, timeout=30.0
    )

    assert anonymous.status_code == 401
    assert with_token.status_code == 200
    assert "feedbackbot" in with_token.json()["applications"]


@pytest.mark.after_shutdown
def test_each_confirmation_mailed_once(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.stop_graph()
    confirmations: dict[str, int] = {}
    for mail in read_mail(stack.mail_dir):
        if mail["Subject"] == "We received your feedback":
            text = mail_text(mail)
            feedback_id = text.split("under the reference ", 1)[1].split(".", 1)[0]
            confirmations[feedback_id] = confirmations.get(feedback_id, 0) + 1

    # Delivery is at least once: a notification replica killed between a send and its
    # record sends that entry again, so only the replica-kill run may show repeats.
    repeated = {feedback_id: count for feedback_id, count in confirmations.items() if count > 1}
    with capsys.disabled():
        print(f"\nconfirmations: {len(confirmations)} feedback, {len(repeated)} mailed more than once")
    assert stack.mailed_once <= set(stack.accepted)
    assert set(confirmations) - stack.erased_ids == set(stack.accepted)
    assert set(repeated) <= stack.chaos_ids


@pytest.mark.after_shutdown
def test_outbox_settled_for_live_targets(stack: Stack) -> None:
    connection = stack.connect_db()
    rows = connection.execute("SELECT target, status, count(*) FROM outbox GROUP BY ALL").fetchall()
    connection.close()

    dead_target = admin_target_id(DEAD_TARGET_URL)
    unsettled = [(target, status, count) for target, status, count in rows if target != dead_target and status != "sent"]
    assert unsettled == []
    assert {status for target, status, _ in rows if target == dead_target} <= {"dead", "pending"}


def test_markup_mailed_as_plain_text(stack: Stack) -> None:
    payload = submission(
        customer_name="<b>Eve</b>",
        rating=1,
        feedback_text=unique_text('<a href="http://evil.example/">click</a> <img src=x>\nsecond line'),
    )
    response = submit(stack, payload)
    assert response.status_code == 201, response.text
    feedback_id = response.json()["id"]
    record_accepted(stack, response.json(), payload, response.headers["X-Request-ID"])

    def is_alert(mail) -> bool:
        return mail["To"] == ADMIN_ADDRESS and feedback_id in mail["Subject"]

    messages = stack.wait_for_mail(lambda mails: any(is_alert(mail) for mail in mails))
    alert = next(mail for mail in messages if is_alert(mail))

    assert alert.get_content_type() == "text/plain"
    text = mail_text(alert)
    assert payload["feedback_text"] in text
    assert f"Customer: <b>Eve</b> <{payload['customer_email']}>" in text
    assert "Rating: 1\n" in text


def test_missing_content_type_rejected(stack: Stack) -> None:
    with stack.client(stack.keys.submit) as client:
        response = client.post("/v1/feedback", content=b'{"rating": 5}')

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_repeated_form_field_rejected(stack: Stack) -> None:
    body = "customer_name=A&customer_name=B&customer_email=a%40example.com&feedback_text=hello+there+friend&rating=4"

    with stack.client(stack.keys.submit) as client:
        response = client.post(
            "/v1/feedback", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )

    assert response.status_code == 422, response.text
    assert [item["field"] for item in response.json()["error"]["fields"]] == ["customer_name"]


def test_slow_model_stores_without_sentiment_then_scores(stack: Stack) -> None:
    # The 'timeout' drill makes every model batch hang past enrichment_timeout_s (5 s).
    stack.service.deploy({"Enrichment": {"failure_drill": "timeout"}}, wait=False)
    try:
        pending = None
        for _ in range(10):
            payload = submission(rating=4, feedback_text=unique_text("Stored while the model hangs."))
            response = submit(stack, payload)
            assert response.status_code == 201, response.text
            body = response.json()
            stack.accepted[body["id"]] = {**payload, "request_id": response.headers["X-Request-ID"]}
            if body["sentiment_status"] == "pending":
                pending = body
                break
    finally:
        stack.service.deploy({"Enrichment": {"failure_drill": "off"}})

    assert pending is not None, "no submission was stored without sentiment while the model hung"
    assert pending["sentiment"] is None
    deadline = time.monotonic() + 60.0
    with stack.client(stack.keys.admin) as client:
        while True:
            stored = client.get(f"/v1/feedback/{pending['id']}").json()
            if stored["sentiment_status"] == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert stored["sentiment_status"] == "done"
    assert stored["sentiment"]["label"] in ("positive", "neutral", "negative")
    assert stored["model_version"].startswith("all-minilm-l6-v2+head-")
