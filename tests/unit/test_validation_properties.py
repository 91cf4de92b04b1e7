"""Property tests of submission validation against an independent statement of the README rules.

Each test draws payloads with hypothesis and compares `validate_submission` with `expected_outcome`,
which restates the rules without pydantic. Every input is either accepted and stored exactly as
the rules require, or rejected with an error that names each bad field and gives a reason.

Two details of the rules are pinned here because the README only says "trimmed" and "characters":
- Trimming removes the characters with the Unicode White_Space property from both ends, as
  pydantic-core's `str_strip_whitespace` does. That set is not Python's `str.isspace()`, which
  also counts U+001C to U+001F, so those four are rejected as control characters, never trimmed.
- Lengths count code points after trimming, so a combining mark or an emoji modifier counts as
  one character of its own.
- An email address must be ASCII before the @, and an internationalised domain is stored in its
  ASCII (xn--) form, because the mail sender cannot deliver to other addresses. For the same
  reason the address must come out of apprise's own address parser unchanged.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import email_validator
import pytest
from apprise.utils.parse import is_email as apprise_parse_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feedbackbot.http_api import batch_envelope, parse_json_object, shallow_payload
from models.feedback import (
    NAME_MAX_CHARS,
    RATING_MAX,
    RATING_MIN,
    SUBMISSION_FIELDS,
    TEXT_MAX_CHARS,
    TEXT_MIN_CHARS,
    FeedbackSubmission,
    validate_submission,
)

# Characters with the Unicode White_Space property: the set that pydantic-core 2.50.4 trims.
UNICODE_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
EDGE_WHITE_SPACE = "".join(sorted(UNICODE_WHITE_SPACE))

# Right-to-left scripts, bidi controls, combining marks, emoji sequences and other text that
# breaks naive handling. None of it is a control character, so all of it must be accepted.
TRICKY_PIECES = [
    "שלום",
    "مرحبا بالعالم",
    "\u202eevil\u202c",
    "\u200f",
    "\u200d",
    "e\u0301",
    "Z\u0351\u0352\u0353\u0354\u0355",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇩🇪",
    "\ufeff",
    "\ufffd",
    "\U0010fffd",
    "Å",
    "ﬁ",
    "'); DROP TABLE feedback; --",
    "<script>alert(1)</script>",
    "\\u0000",
    "%00",
]

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Valid submissions carry texts of up to 5000 characters, which are slow to draw.
VALID_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def trim(value: str) -> str:
    start = 0
    end = len(value)
    while start < end and value[start] in UNICODE_WHITE_SPACE:
        start += 1
    while end > start and value[end - 1] in UNICODE_WHITE_SPACE:
        end -= 1
    return value[start:end]


def has_forbidden_char(value: str, allowed: frozenset[str]) -> bool:
    for char in value:
        category = unicodedata.category(char)
        if category == "Cs":
            return True
        if category == "Cc" and char not in allowed:
            return True
    return False


@dataclass
class Expected:
    """Outcome that the README rules require for one payload: the stored values, or the bad fields."""

    stored: dict[str, Any] = field(default_factory=dict)
    bad_fields: set[str] = field(default_factory=set)


def expected_name(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    trimmed = trim(value)
    if not 1 <= len(trimmed) <= NAME_MAX_CHARS:
        return None
    if has_forbidden_char(trimmed, frozenset()):
        return None
    return trimmed


def expected_email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    trimmed = trim(value)
    if has_forbidden_char(trimmed, frozenset()):
        return None
    try:
        checked = email_validator.validate_email(trimmed, check_deliverability=False, allow_smtputf8=False)
    except email_validator.EmailNotValidError:
        return None
    parsed = apprise_parse_email(checked.ascii_email)
    if not parsed or parsed["full_email"] != checked.ascii_email:
        return None
    return checked.ascii_email


def expected_text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    trimmed = trim(value.replace("\r\n", "\n"))
    if not TEXT_MIN_CHARS <= len(trimmed) <= TEXT_MAX_CHARS:
        return None
    if has_forbidden_char(trimmed, frozenset("\n\t")):
        return None
    return trimmed


def expected_rating(value: object, *, from_form: bool) -> int | None:
    if from_form and isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            return None
        value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if not RATING_MIN <= value <= RATING_MAX:
        return None
    return value


def expected_outcome(payload: dict[str, Any], *, from_form: bool = False) -> Expected:
    outcome = Expected()
    if any(has_lone_surrogate(key) for key in payload):
        # pydantic rejects such a key before it looks at any field, and a JSON error response
        # could not name it anyway, so the whole body is the field.
        outcome.bad_fields.add("body")
        return outcome

    checks = {
        "customer_name": expected_name,
        "customer_email": expected_email,
        "feedback_text": expected_text,
        "rating": lambda value: expected_rating(value, from_form=from_form),
    }
    for name, check in checks.items():
        if name not in payload:
            outcome.bad_fields.add(name)
            continue
        stored = check(payload[name])
        if stored is None:
            outcome.bad_fields.add(name)
        else:
            outcome.stored[name] = stored

    outcome.bad_fields.update(key for key in payload if key not in SUBMISSION_FIELDS)
    return outcome


def has_lone_surrogate(text: str) -> bool:
    """Return whether `text` contains a UTF-16 surrogate code point, which UTF-8 cannot encode."""
    return any(0xD800 <= ord(character) <= 0xDFFF for character in text)


def assert_matches_rules(payload: dict[str, Any], *, from_form: bool = False) -> None:
    expected = expected_outcome(payload, from_form=from_form)

    result = validate_submission(payload, from_form=from_form)

    if not expected.bad_fields:
        assert result.errors == []
        assert result.submission is not None
        assert result.submission.model_dump() == expected.stored
        return
    assert result.submission is None
    assert {error.field for error in result.errors} == expected.bad_fields
    for error in result.errors:
        assert error.field in error.message, f"the message does not name its field: {error}"
        assert len(error.message) > len(error.field) + 10, f"the message gives no reason: {error}"


# Text of letters, marks, digits, punctuation, symbols and separators, with the tricky pieces
# mixed in. It has no control characters, so its validity depends on its length only.
printable_chars = st.characters(exclude_categories=("Cc", "Cs"))
tricky_text = st.lists(st.one_of(st.text(printable_chars, max_size=30), st.sampled_from(TRICKY_PIECES)), max_size=12).map(
    "".join
)
edge_space = st.text(st.sampled_from(EDGE_WHITE_SPACE), max_size=3)
# Any code point at all, lone surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()), max_size=60)


@st.composite
def padded(draw: st.DrawFn, core: st.SearchStrategy[str]) -> str:
    return draw(edge_space) + draw(core) + draw(edge_space)


def exact_length(length: int) -> st.SearchStrategy[str]:
    # A short random piece repeated: drawing thousands of characters one by one is slow.
    piece = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=20)
    return piece.map(lambda value: (value * length)[:length])


def long_word(length: int) -> st.SearchStrategy[str]:
    return st.sampled_from(["a", "ß", "字", "ك", "👍", "e\u0301"]).map(lambda piece: (piece * length)[:length])


valid_names = padded(
    st.one_of(
        tricky_text.filter(lambda value: 1 <= len(trim(value)) <= NAME_MAX_CHARS),
        exact_length(1),
        exact_length(NAME_MAX_CHARS),
        long_word(NAME_MAX_CHARS),
    )
)
valid_texts = padded(
    st.one_of(
        st.tuples(tricky_text, st.sampled_from(["\n", "\r\n", "\t", " "]), tricky_text)
        .map("".join)
        .filter(lambda value: TEXT_MIN_CHARS <= len(trim(value.replace("\r\n", "\n"))) <= TEXT_MAX_CHARS),
        exact_length(TEXT_MIN_CHARS),
        exact_length(TEXT_MAX_CHARS),
        long_word(TEXT_MAX_CHARS),
    )
)
valid_emails = st.one_of(
    # st.emails() follows RFC 5322, so some of its addresses break the apprise rule above.
    st.emails().filter(lambda address: expected_email(address) is not None),
    st.sampled_from(
        [
            "ada@example.com",
            "Ada.Lovelace+tag@Sub.Example.ORG",
            "ada@例子.广告",
            "user@bücher.example",
            "user@xn--bcher-kva.example",
        ]
    ),
)
valid_submissions = st.fixed_dictionaries(
    {
        "customer_name": valid_names,
        "customer_email": padded(valid_emails),
        "feedback_text": valid_texts,
        "rating": st.integers(RATING_MIN, RATING_MAX),
    }
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), any_text
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=6)


def field_values(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values for one field, often invalid ones, sometimes any JSON value."""
    return st.one_of(valid, any_text, padded(tricky_text), json_values)


any_submissions = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {},
        optional={
            "customer_name": field_values(valid_names),
            "customer_email": field_values(valid_emails),
            "feedback_text": field_values(valid_texts),
            "rating": st.one_of(st.integers(-2, 8), json_values),
        },
    ),
    st.dictionaries(any_text.filter(lambda key: key not in SUBMISSION_FIELDS), json_values, max_size=2),
)


@VALID_SETTINGS
@given(valid_submissions)
@example(
    {
        "customer_name": "\u3000 " + "n" * NAME_MAX_CHARS + "\xa0\t",
        "customer_email": " ada@example.com ",
        "feedback_text": "\r\n" + "t" * TEXT_MAX_CHARS + "\r\n",
        "rating": RATING_MAX,
    }
)
@example(
    {
        "customer_name": "מרים",
        "customer_email": "ada@example.com",
        "feedback_text": "line one\r\nline two\r\n\tend",
        "rating": RATING_MIN,
    }
)
def test_valid_submission_stored_as_rules_say(payload: dict[str, Any]) -> None:
    expected = expected_outcome(payload)
    assert expected.bad_fields == set(), f"the strategy drew an invalid submission: {expected.bad_fields}"

    result = validate_submission(payload)

    assert result.errors == []
    assert result.submission is not None
    assert result.submission.model_dump() == expected.stored


@PROPERTY_SETTINGS
@given(any_submissions)
@example({"customer_name": "\x1cAda", "customer_email": "ada@example.com", "feedback_text": "0123456789", "rating": 1})
@example({"customer_name": "Ada", "customer_email": "ada@example.com", "feedback_text": "\ud800 0123456789", "rating": 1})
@example({"customer_name": "A\ud83d", "customer_email": "ada@example.com", "feedback_text": "0123456789", "rating": 1})
@example({"customer_name": "Ada", "customer_email": "ada@example.com", "feedback_text": "12345678\r\r\n9", "rating": 1})
@example({"customer_name": "Ada", "customer_email": "ada@example.com", "feedback_text": " 123456789\r\n", "rating": 5.0})
@example({"customer_name": "x" * (NAME_MAX_CHARS + 1), "customer_email": "", "feedback_text": "a" * (TEXT_MAX_CHARS + 1), "rating": 10**40})
def test_any_submission_accepted_or_fields_named(payload: dict[str, Any]) -> None:
    assert_matches_rules(payload)


@PROPERTY_SETTINGS
@given(any_submissions)
@example({"customer_name": [[["deep"]]], "customer_email": {"a": [1]}, "feedback_text": [], "rating": {}, "extra": [1]})
def test_shallow_payload_keeps_outcome(payload: dict[str, Any]) -> None:
    assert validate_submission(shallow_payload(payload)) == validate_submission(payload)


def test_batch_items_reach_validation_shallow() -> None:
    # Ray pickles the items for validation; a 900-deep value would exceed the recursion limit.
    nested = "[" * 900 + "]" * 900
    body = ('{"submissions": [{"customer_name": ' + nested + ', "customer_email": {"a": [1]}, "rating": 3}]}').encode()

    items = batch_envelope(None, body)

    assert items == [{"customer_name": [], "customer_email": {}, "rating": 3}]


@PROPERTY_SETTINGS
@given(
    valid_submissions,
    st.one_of(
        st.integers(-3, 9).map(str),
        st.integers(RATING_MIN, RATING_MAX).map(lambda rating: f" 0{rating}\t"),
        st.text(max_size=4),
        st.sampled_from(["٣", "３", "3.0", "+3", "", "5 5"]),
    ),
)
def test_form_rating_digits_only(payload: dict[str, Any], rating: str) -> None:
    form = {**payload, "rating": rating}

    assert_matches_rules(form, from_form=True)


@VALID_SETTINGS
@given(valid_submissions)
def test_valid_submission_json_roundtrip(payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()

    result = validate_submission(parse_json_object(body))

    assert result.submission is not None
    assert result.submission.model_dump() == expected_outcome(payload).stored


@VALID_SETTINGS
@given(valid_submissions)
def test_stored_submission_valid_again(payload: dict[str, Any]) -> None:
    submission = validate_submission(payload).submission
    assert submission is not None

    again = validate_submission(submission.model_dump())

    assert again.submission == submission


@PROPERTY_SETTINGS
@given(st.one_of(json_values, st.lists(json_values, max_size=2)).filter(lambda value: not isinstance(value, dict)))
def test_non_object_body_names_body(body: Any) -> None:
    result = validate_submission(body)

    assert result.submission is None
    assert [error.field for error in result.errors] == ["body"]
    assert "JSON object" in result.errors[0].message


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_invalid(depth: int) -> None:
    body = b"[" * depth + b"]" * depth

    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json_object(body)


def test_request_schema_lists_rules() -> None:
    schema = FeedbackSubmission.model_json_schema()

    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(SUBMISSION_FIELDS)
    assert properties["customer_name"]["maxLength"] == NAME_MAX_CHARS
    assert properties["feedback_text"]["minLength"] == TEXT_MIN_CHARS
    assert properties["feedback_text"]["maxLength"] == TEXT_MAX_CHARS
    assert (properties["rating"]["minimum"], properties["rating"]["maximum"]) == (RATING_MIN, RATING_MAX)


@pytest.mark.parametrize("field_name", ["customer_name", "customer_email", "feedback_text"])
def test_lone_surrogate_rejected_with_reason(field_name: str) -> None:
    payload = {
        "customer_name": "Ada",
        "customer_email": "ada@example.com",
        "feedback_text": "0123456789",
        "rating": 3,
    }
    payload[field_name] = "\ud800" + payload[field_name]

    result = validate_submission(payload)

    assert [error.field for error in result.errors] == [field_name]
    assert "unpaired surrogate" in result.errors[0].message


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("ada@例子.广告", "ada@xn--fsqu00a.xn--4rr70v"),
        ("Ada@EXAMPLE.com", "Ada@example.com"),
    ],
)
def test_email_domain_stored_as_ascii(address: str, stored: str) -> None:
    payload = {"customer_name": "Ada", "customer_email": address, "feedback_text": "0123456789", "rating": 3}

    submission = validate_submission(payload).submission

    assert submission is not None
    assert submission.customer_email == stored


@pytest.mark.parametrize("address", ["josé@example.com", "用户@例子.广告"])
def test_email_non_ascii_local_part_rejected(address: str) -> None:
    payload = {"customer_name": "Ada", "customer_email": address, "feedback_text": "0123456789", "rating": 3}

    result = validate_submission(payload)

    assert [error.field for error in result.errors] == ["customer_email"]
    assert "before the @-sign" in result.errors[0].message


@pytest.mark.parametrize("address", ["o'brien@example.com", "a+b+c@example.com", "x'@example.com"])
def test_email_apprise_cannot_send_rejected(address: str) -> None:
    payload = {"customer_name": "Ada", "customer_email": address, "feedback_text": "0123456789", "rating": 3}

    result = validate_submission(payload)

    assert [error.field for error in result.errors] == ["customer_email"]
    assert "cannot deliver" in result.errors[0].message
    assert address in result.errors[0].message
