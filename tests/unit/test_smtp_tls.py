"""TLS context reuse in apprise's SMTP plugin, against a real STARTTLS sink on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import apprise
import pytest
from aiosmtpd.controller import Controller
from apprise.plugins.email import smtp as apprise_smtp

from feedbackbot.mailsink import FolderHandler
from feedbackbot.smtp_tls import reuse_smtp_tls_contexts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def starttls_sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Start an SMTP sink that offers STARTTLS with a self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    port = _free_port()
    controller = Controller(FolderHandler(mail_dir), hostname="127.0.0.1", port=port, tls_context=server_context)
    controller.start()
    try:
        yield port, mail_dir
    finally:
        controller.stop()


def _send(port: int, verify: bool) -> bool:
    url = (
        f"mailto://127.0.0.1:{port}?from=bot@feedbackbot.localhost&to=ada@example.com"
        f"&mode=starttls&verify={'yes' if verify else 'no'}&format=text"
    )
    sender = apprise.Apprise()
    assert sender.add(url)
    return bool(sender.notify(body="body", title="title", body_format=apprise.NotifyFormat.TEXT))


def test_reuse_is_idempotent() -> None:
    assert reuse_smtp_tls_contexts()
    assert reuse_smtp_tls_contexts()
    assert apprise_smtp.ssl.CERT_NONE == ssl.CERT_NONE


def test_context_reused_within_thread() -> None:
    reuse_smtp_tls_contexts()

    first = apprise_smtp.ssl.create_default_context()
    second = apprise_smtp.ssl.create_default_context()

    assert first is second


def test_context_per_thread() -> None:
    reuse_smtp_tls_contexts()
    contexts: list[ssl.SSLContext] = []
    worker = threading.Thread(target=lambda: contexts.append(apprise_smtp.ssl.create_default_context()))

    worker.start()
    worker.join()

    assert contexts[0] is not apprise_smtp.ssl.create_default_context()


def test_checks_restored_after_unverified_use() -> None:
    reuse_smtp_tls_contexts()
    context = apprise_smtp.ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    again = apprise_smtp.ssl.create_default_context()

    assert again.verify_mode == ssl.CERT_REQUIRED
    assert again.check_hostname


def test_custom_arguments_get_new_context() -> None:
    reuse_smtp_tls_contexts()

    custom = apprise_smtp.ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    assert custom is not apprise_smtp.ssl.create_default_context()


def test_unverified_send_does_not_weaken_next(starttls_sink: tuple[int, Path]) -> None:
    port, mail_dir = starttls_sink
    reuse_smtp_tls_contexts()

    unverified_sent = _send(port, verify=False)
    verified_sent = _send(port, verify=True)
    unverified_again = _send(port, verify=False)

    assert unverified_sent
    # The sink's certificate is self-signed, so a verifying client must reject it.
    assert not verified_sent
    assert unverified_again
    assert len(list(mail_dir.glob("*.eml"))) == 2
