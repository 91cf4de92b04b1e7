"""Validation rules of a feedback submission, as a table of good and bad inputs."""

from __future__ import annotations

import pytest

from models.feedback import validate_submission

GOOD = {
    "customer_name": "Ada Lovelace",
    "customer_email": "ada@example.com",
    "feedback_text": "The parcel arrived a day early. Thank you!",
    "rating": 5,
}


def with_changes(**changes: object) -> dict[str, object]:
    payload = dict(GOOD)
    payload.update(changes)
    return payload


def without(field: str) -> dict[str, object]:
    return {key: value for key, value in GOOD.items() if key != field}


ACCEPTED = [
    ("plain", GOOD),
    ("rating 1", with_changes(rating=1)),
    ("name of 200 chars", with_changes(customer_name="n" * 200)),
    ("text of exactly 10 chars", with_changes(feedback_text="0123456789")),
    ("text of 5000 chars", with_changes(feedback_text="a" * 5000)),
    ("newline and tab in text", with_changes(feedback_text="line one\n\tline two")),
    ("unicode name and text", with_changes(customer_name="Zoë Ødegård-Ñúñez", feedback_text="Très bien 👍 شكرا جزيلا")),
    ("plus address", with_changes(customer_email="ada+shop@sub.example.org")),
]

REJECTED = [
    ("rating 0", with_changes(rating=0), "rating", "got 0"),
    ("rating 6", with_changes(rating=6), "rating", "got 6"),
    ("rating 3.5", with_changes(rating=3.5), "rating", "fraction 3.5"),
    ("rating as string", with_changes(rating="3"), "rating", "JSON number"),
    ("rating true", with_changes(rating=True), "rating", "boolean true"),
    ("rating null", with_changes(rating=None), "rating", "null"),
    ("rating missing", without("rating"), "rating", "required"),
    ("name missing", without("customer_name"), "customer_name", "required"),
    ("email missing", without("customer_email"), "customer_email", "required"),
    ("text missing", without("feedback_text"), "feedback_text", "required"),
    ("name only spaces", with_changes(customer_name="   "), "customer_name", "empty"),
    ("name 201 chars", with_changes(customer_name="n" * 201), "customer_name", "at most 200"),
    ("name with newline", with_changes(customer_name="Ada\nLovelace"), "customer_name", "U+000A"),
    ("name not a string", with_changes(customer_name=42), "customer_name", "must be a string"),
    ("email without domain", with_changes(customer_email="ada@"), "customer_email", "not a valid email"),
    ("email without at", with_changes(customer_email="ada.example.com"), "customer_email", "not a valid email"),
    ("text 9 chars after trim", with_changes(feedback_text="   123456789   "), "feedback_text", "at least 10"),
    ("text 5001 chars", with_changes(feedback_text="a" * 5001), "feedback_text", "at most 5000"),
    ("text with NUL", with_changes(feedback_text="hello\x00 world!"), "feedback_text", "U+0000"),
    ("text with escape", with_changes(feedback_text="hello \x1b[31m world"), "feedback_text", "U+001B"),
    ("text with lone CR", with_changes(feedback_text="hello\rworld again"), "feedback_text", "U+000D"),
    ("unknown field", with_changes(coupon="SAVE10"), "coupon", "Unknown field"),
]


@pytest.mark.parametrize(("case", "payload"), ACCEPTED, ids=[case for case, _ in ACCEPTED])
def test_valid_submission_accepted(case: str, payload: dict[str, object]) -> None:
    result = validate_submission(payload)

    assert result.errors == []
    assert result.submission is not None


@pytest.mark.parametrize(
    ("case", "payload", "field", "fragment"), REJECTED, ids=[case for case, *_ in REJECTED]
)
def test_invalid_submission_rejected(case: str, payload: dict[str, object], field: str, fragment: str) -> None:
    result = validate_submission(payload)

    assert result.submission is None
    assert [error.field for error in result.errors] == [field]
    assert fragment in result.errors[0].message


@pytest.mark.parametrize("body", [[], [GOOD], "text", 5, None, True])
def test_body_not_object_rejected(body: object) -> None:
    result = validate_submission(body)

    assert result.submission is None
    assert [error.field for error in result.errors] == ["body"]
    assert "JSON object" in result.errors[0].message


def test_every_bad_field_listed() -> None:
    payload = {"customer_name": "", "customer_email": "x", "feedback_text": "short", "rating": 9, "extra": 1}

    result = validate_submission(payload)

    assert sorted(error.field for error in result.errors) == [
        "customer_email",
        "customer_name",
        "extra",
        "feedback_text",
        "rating",
    ]


def test_strings_trimmed_and_crlf_normalised() -> None:
    payload = with_changes(customer_name="  Ada  ", feedback_text="  first line\r\nsecond line  ")

    submission = validate_submission(payload).submission

    assert submission is not None
    assert submission.customer_name == "Ada"
    assert submission.feedback_text == "first line\nsecond line"


def test_email_domain_normalised() -> None:
    submission = validate_submission(with_changes(customer_email="Ada@EXAMPLE.COM")).submission

    assert submission is not None
    assert submission.customer_email == "Ada@example.com"


@pytest.mark.parametrize(("raw", "expected"), [("4", 4), (" 2 ", 2)])
def test_form_rating_digits_accepted(raw: str, expected: int) -> None:
    submission = validate_submission(with_changes(rating=raw), from_form=True).submission

    assert submission is not None
    assert submission.rating == expected


@pytest.mark.parametrize("raw", ["3.5", "three", "", "٣"])
def test_form_rating_non_digits_rejected(raw: str) -> None:
    result = validate_submission(with_changes(rating=raw), from_form=True)

    assert [error.field for error in result.errors] == ["rating"]
