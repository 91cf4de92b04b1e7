"""A development SMTP server that writes every message it receives to a folder.

It is the default notification target of `make run` and the sink of the integration
tests. Each message lands as `<folder>/<UTC time>-<uuid>.eml`, written to a temporary
name first and renamed, so a reader never sees half a message.

    python -m feedbackbot.mailsink --port 2525 --folder data/mail
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session, SMTP

logger = logging.getLogger("feedbackbot.mailsink")


class FolderHandler:
    """aiosmtpd handler that stores each message as an .eml file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{uuid.uuid4().hex}.eml"
        partial = self.folder / f".{name}.partial"

        headers = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        partial.write_bytes(headers + envelope.original_content)
        os.replace(partial, self.folder / name)

        logger.info("Stored message %s for %d recipient(s)", name, len(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Development SMTP sink that writes messages to files.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=2525, help="TCP port to listen on.")
    parser.add_argument("--folder", type=Path, required=True, help="Folder for the .eml files.")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every SMTP command at INFO; one line per stored message is enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    args.folder.mkdir(parents=True, exist_ok=True)

    controller = Controller(FolderHandler(args.folder), hostname=args.host, port=args.port)
    controller.start()
    logger.info("Mail sink listening on %s:%d, writing to %s", args.host, args.port, args.folder)

    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        controller.stop()
        logger.info("Mail sink stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
