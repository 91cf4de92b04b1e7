"""Log lines of grouped calls under the request id of each item.

Ingest sends concurrent single submissions to validation, enrichment and persistence in
groups, one call per group. Serve's log filter stamps a record with the request id of the
call being handled, which for a grouped call is an id that Serve made up. Inside
`as_request(request_id)` records carry the gateway's X-Request-ID of one item instead, so
that `request_id` in the JSON logs still finds every line of one submission.

It sets Serve's request context variable, a private part of Ray (pinned as ray==2.60.0 in
pyproject.toml); tests/unit/test_logcontext.py fails when Ray changes it.
"""

import contextlib
import dataclasses
from collections.abc import Iterator

from ray.serve import context as serve_context


@contextlib.contextmanager
def as_request(request_id: str) -> Iterator[None]:
    """Make Serve's log records written inside the block carry `request_id`.

    The change is local to the running asyncio task (or thread) and undone on exit.
    """
    current = serve_context._get_serve_request_context()
    token = serve_context._serve_request_context.set(dataclasses.replace(current, request_id=request_id))
    try:
        yield
    finally:
        serve_context._serve_request_context.reset(token)
