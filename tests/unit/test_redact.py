"""Masking of customer data and secrets for logs and metric labels."""

from __future__ import annotations

import pytest

from feedbackbot.redact import TEXT_PREVIEW_CHARS, mask_email, mask_key, mask_target_url, mask_text, mask_url


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("ada@example.com", "a***@example.com"),
        ("a@example.com", "a***@example.com"),
        ("not-an-address", "***"),
        ("", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


def test_mask_email_hides_local_part() -> None:
    assert "lovelace" not in mask_email("ada.lovelace@example.com")


def test_mask_text_short_kept() -> None:
    assert mask_text("Great service") == "'Great service'"


def test_mask_text_long_cut() -> None:
    text = "The parcel arrived two weeks late and the box was crushed."

    masked = mask_text(text)

    assert text not in masked
    assert masked.startswith(repr(text[:TEXT_PREVIEW_CHARS]))
    assert f"({len(text)} chars)" in masked


def test_mask_text_newlines_flattened() -> None:
    assert "\n" not in mask_text("line one\nline two\nline three and more text")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mailtos://user:secret@smtp.example.com:465?to=ops@example.com", "mailtos://smtp.example.com:465"),
        ("mailto://127.0.0.1:2525?from=feedback@feedbackbot.localhost", "mailto://127.0.0.1:2525"),
        ("https://hooks.example.com/path/token?key=1", "https://hooks.example.com"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mailtos://user:secret@smtp.example.com:465?to=ops@example.com", "mailtos://smtp.example.com"),
        ("mailto://127.0.0.1:2525?from=feedback@feedbackbot.localhost&to=a@b.example", "mailto://127.0.0.1"),
        ("https://user:pw@hooks.example.com/services/T000/B000/XXXX", "https://hooks.example.com"),
        ("JSONS://api.example.com/notify", "jsons://api.example.com"),
        # Apprise puts tokens where the host goes for these schemes, so only the scheme stays.
        ("tgram://123456:bot-token/987654", "tgram://(hidden)"),
        ("slack://TokenA/TokenB/TokenC/#channel", "slack://(hidden)"),
        ("discord://webhook-id/webhook-token", "discord://(hidden)"),
        ("no scheme at all", "unknown://(hidden)"),
    ],
)
def test_mask_target_url(url: str, masked: str) -> None:
    assert mask_target_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "mailtos://user:secret@smtp.example.com?to=ops@example.com",
        "https://user:secret@hooks.example.com/token?key=secret",
        "tgram://secret/987654",
    ],
)
def test_mask_target_url_drops_secrets(url: str) -> None:
    masked = mask_target_url(url)

    assert "secret" not in masked
    assert "@" not in masked
    assert "?" not in masked


def test_mask_key_keeps_prefix() -> None:
    assert mask_key("fbk_abcdefghijkl") == "fbk_…"
    assert mask_key("") == "(empty)"
