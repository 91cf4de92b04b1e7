"""as_request: Serve's log filter stamps records with the request id of one grouped item."""

import asyncio
import logging

from ray.serve._private.logging_utils import ServeContextFilter

from feedbackbot.logcontext import as_request


def stamped_request_id(message: str) -> str | None:
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, message, None, None)
    ServeContextFilter().filter(record)
    return getattr(record, "request_id", None)


def test_block_sets_request_id() -> None:
    with as_request("gateway-id-1"):
        inside = stamped_request_id("inside")
    after = stamped_request_id("after")

    assert inside == "gateway-id-1"
    assert after is None


def test_tasks_keep_own_request_id() -> None:
    async def log_as(request_id: str, wait: asyncio.Event, other: asyncio.Event) -> str | None:
        with as_request(request_id):
            other.set()
            await wait.wait()
            return stamped_request_id(request_id)

    async def main() -> list[str | None]:
        first, second = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(log_as("a", first, second), log_as("b", second, first))

    assert asyncio.run(main()) == ["a", "b"]
