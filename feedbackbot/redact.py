"""Masking for logs: customer emails, feedback text and secrets never appear in full."""

from __future__ import annotations

from urllib.parse import urlsplit

TEXT_PREVIEW_CHARS = 24
# Apprise schemes whose host part names a server rather than holding a token.
HOST_SCHEMES = frozenset(
    {"mailto", "mailtos", "http", "https", "json", "jsons", "xml", "xmls", "form", "forms"}
)


def mask_email(address: str) -> str:
    """Return the address with all but the first character of the local part hidden."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_text(text: str) -> str:
    """Return a short preview of a feedback text with its length."""
    preview = text[:TEXT_PREVIEW_CHARS].replace("\n", " ")
    return f"{preview!r}… ({len(text)} chars)" if len(text) > TEXT_PREVIEW_CHARS else repr(preview)


def mask_url(url: str) -> str:
    """Return scheme, host and port of a URL, without user, password, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def mask_target_url(url: str) -> str:
    """Return scheme and host of a notify URL, for metric labels.

    Only for schemes whose host part is a server (mail, HTTP and apprise's JSON, XML and
    form posts) is the host kept. Other apprise schemes put a token or a chat id where the
    host goes, so for them only the scheme is kept.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower() or "unknown"
    if scheme not in HOST_SCHEMES or not parts.hostname:
        return f"{scheme}://(hidden)"
    return f"{scheme}://{parts.hostname}"


def mask_key(key: str) -> str:
    """Return the first four characters of an API key or token."""
    return key[:4] + "…" if key else "(empty)"
