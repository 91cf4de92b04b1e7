"""Templates, security headers and static assets of the browser pages."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from feedbackbot.http_api import request_id_of

WEB_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

# Every asset the pages load, with its media type. Names outside this table get 404, so a
# request path never reaches the file system unchecked.
STATIC_TYPES = {
    "site.css": "text/css; charset=utf-8",
    "form.js": "text/javascript; charset=utf-8",
}
STATIC_MAX_AGE_S = 300

# Scripts and styles load only from this origin, so an injected <script> or inline handler
# does not run even if some customer text escaped Jinja's autoescape. The chart is inline
# SVG markup, which needs no img-src. Scripts may fetch from this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Each form page carries a fresh idempotency key and the admin pages show personal data,
    # so no page is cached.
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """Return the Jinja environment; autoescape is on for every template."""
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a template into an HTML response with the security headers of every page."""
    html = environment().get_template(template).render(request_id=request_id_of(request), **context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def static_asset(name: str) -> Response:
    """Return one file of the static folder, or a plain 404 for a name not in STATIC_TYPES."""
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        return Response("No such asset.\n", status_code=404, media_type="text/plain")

    content = (STATIC_DIR / name).read_bytes()
    headers = {"Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}", "X-Content-Type-Options": "nosniff"}
    return Response(content, media_type=media_type, headers=headers)
