"""Reuse of TLS client contexts in apprise's SMTP plugin.

apprise 2.2.0 calls `ssl.create_default_context()` for every mail it sends, even over plain
SMTP. That call loads the system's CA bundle, which took about 19 ms of CPU each time on the
benchmark machine (AMD EPYC, 2 cores, measured with timeit). It was the largest CPU cost of
the Notification replica.
`reuse_smtp_tls_contexts` gives that plugin a stand-in for the `ssl` module that keeps one
context per thread and resets its verification settings before each use, so that a target
with `verify=no` cannot weaken the next send.

A context is reset and handed out in the thread that opens the connection, and apprise uses
it only while it connects (SMTP over TLS) or upgrades (STARTTLS) inside that same call, so
one context per thread is never shared by two handshakes at once.
"""

from __future__ import annotations

import logging
import ssl
import threading
from types import ModuleType
from typing import Any

logger = logging.getLogger("ray.serve")


class _ReusedContextSSL:
    """Stand-in for the `ssl` module with a per-thread `create_default_context`."""

    def __init__(self, ssl_module: ModuleType) -> None:
        self._ssl = ssl_module
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ssl, name)

    def create_default_context(
        self,
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        """Return this thread's client context with certificate and hostname checks on.

        A call with any non-default argument gets a new context, as from the `ssl` module.
        """
        if purpose != ssl.Purpose.SERVER_AUTH or cafile or capath or cadata:
            return self._ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)

        context = getattr(self._local, "context", None)
        if context is None:
            context = self._ssl.create_default_context()
            self._local.context = context

        # The previous user may have turned checks off; verify_mode must be set before
        # check_hostname can be turned back on.
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        return context


def reuse_smtp_tls_contexts() -> bool:
    """Make apprise's SMTP plugin reuse one TLS context per thread; return whether it applied.

    Idempotent. When apprise's SMTP module no longer uses a module-level `ssl` name (another
    apprise version), nothing changes and the function returns False after logging it.
    """
    from apprise.plugins.email import smtp  # noqa: PLC0415 - imported in the replica, not at import time

    current = getattr(smtp, "ssl", None)
    if isinstance(current, _ReusedContextSSL):
        return True
    if current is not ssl:
        logger.warning(
            "apprise's SMTP module has no module-level ssl import; mail keeps building a TLS context per send"
        )
        return False

    smtp.ssl = _ReusedContextSSL(ssl)
    logger.info("apprise's SMTP plugin now reuses one TLS context per thread")
    return True
