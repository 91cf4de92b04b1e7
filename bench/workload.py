"""Request bodies for the load generator, taken from the valid lines of the sample data set."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.feedback import validate_submission

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_FILE = PROJECT_ROOT / "datasets" / "feedback_samples.jsonl"
SINGLE_PATH = "/v1/feedback"
BATCH_PATH = "/v1/feedback:batch"


@dataclass(frozen=True)
class PlannedRequest:
    """One POST that the load generator sends: path, JSON body, headers and item count."""

    path: str
    body: bytes
    headers: dict[str, str]
    items: int


RequestFactory = Callable[[], PlannedRequest]


def load_valid_submissions(path: Path = SAMPLES_FILE) -> list[dict[str, Any]]:
    """Return every line of the JSONL file that passes `validate_submission`, in file order."""
    submissions = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            payload = json.loads(line)
            if not validate_submission(payload).errors:
                submissions.append(payload)

    if not submissions:
        raise ValueError(f"{path} contains no valid submission; restore it from git.")
    return submissions


def single_requests(submissions: list[dict[str, Any]], run_id: str) -> RequestFactory:
    """Return a factory of `POST /v1/feedback` requests, each with a new Idempotency-Key.

    The submissions repeat in a cycle. A repeated body with a new key is a new feedback
    for the service, so every request stores a row.
    """
    bodies = itertools.cycle([json.dumps(submission).encode() for submission in submissions])
    counter = itertools.count()

    def next_request() -> PlannedRequest:
        key = f"bench-{run_id}-s{next(counter)}"
        return PlannedRequest(SINGLE_PATH, next(bodies), _headers(key), items=1)

    return next_request


def batch_requests(submissions: list[dict[str, Any]], run_id: str, batch_size: int) -> RequestFactory:
    """Return a factory of `POST /v1/feedback:batch` requests of `batch_size` items each.

    Each request takes the next `batch_size` submissions of the cycle and a new
    Idempotency-Key.
    """
    if not 1 <= batch_size <= 500:
        raise ValueError(f"batch_size must be 1 to 500 as the batch route allows; got {batch_size}.")

    items = itertools.cycle(submissions)
    counter = itertools.count()

    def next_request() -> PlannedRequest:
        key = f"bench-{run_id}-b{batch_size}-{next(counter)}"
        batch = list(itertools.islice(items, batch_size))
        body = json.dumps({"submissions": batch}).encode()
        return PlannedRequest(BATCH_PATH, body, _headers(key), items=batch_size)

    return next_request


def max_batch_body_bytes(submissions: list[dict[str, Any]], batch_size: int) -> int:
    """Return the largest body that `batch_requests` builds for this size over one cycle."""
    factory = batch_requests(submissions, "size", batch_size)
    rounds = max(1, len(submissions) // batch_size + 1)
    return max(len(factory().body) for _ in range(rounds))


def new_run_id() -> str:
    """Return a short id that keeps the Idempotency-Keys of two runs apart."""
    return uuid.uuid4().hex[:8]


def _headers(idempotency_key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
