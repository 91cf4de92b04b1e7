"""The exceptions feedbackbot raises, in one tree.

    FeedbackbotError
    ├── SettingsError          a setting has the wrong type or value
    ├── ServiceError           the local service (Ray, Nginx, mail sink) failed to start or stop
    ├── StoreError             DuckDB failed to open, write or read the feedback database
    │   └── StoreUnavailable   the writer cannot commit right now, so the client may retry
    ├── EnrichmentError        the sentiment model failed on a batch
    ├── KeyStoreError          the API key store cannot be read, written or changed as requested
    │   └── KeyNotFound        no key in the store has the requested key id
    └── SnapshotError          publishing, compacting or reading the Parquet snapshots failed
        ├── SnapshotNotFound   the snapshot folder has no published snapshot yet
        └── SnapshotQueryError a query against the snapshots is invalid (SQL, names, types)

Every message states what was attempted, the offending value and the next step to try.
`error_summary` shortens any error, including Ray's wrapped ones, to one line for logs.
`feedbackbot.sentiment.SentimentModelError` stays in its own module because the training
script imports that module without the service.
"""

from __future__ import annotations


class FeedbackbotError(Exception):
    """Base class of every error that feedbackbot raises on purpose."""


class SettingsError(FeedbackbotError):
    """A setting is missing, has the wrong type or is out of range."""

    def __init__(self, key: str, expected: str, value: object, problem: str) -> None:
        self.key = key
        self.expected = expected
        self.value = value
        super().__init__(
            f"Invalid setting {key}={value!r}: expected {expected}, but {problem}. "
            "Fix it in serve_config.yaml or in the FEEDBACKBOT_ environment variable that overrides it."
        )


class ServiceError(FeedbackbotError):
    """A local process of the service (Ray, Nginx, the mail sink) failed to start or stop."""


class StoreError(FeedbackbotError):
    """DuckDB failed to open, write or read the feedback database."""


class StoreUnavailable(StoreError):
    """The single writer cannot commit right now, so the client should retry later."""


class EnrichmentError(FeedbackbotError):
    """The sentiment model failed to score a batch of texts."""


class KeyStoreError(FeedbackbotError):
    """The API key store cannot be read or written, or it rejects the requested change."""


class KeyNotFound(KeyStoreError):
    """No key in the store has the requested key id."""


class SnapshotError(FeedbackbotError):
    """Publishing, compacting or reading the Parquet snapshots of the feedback database failed."""


class SnapshotNotFound(SnapshotError):
    """The snapshot folder has no manifest yet: persistence has not published a snapshot there."""


class SnapshotQueryError(SnapshotError):
    """A query against the snapshots is invalid: bad SQL, an unknown name or a type error."""


def error_summary(error: BaseException) -> str:
    """Return the last line of an error's text, or its type name when it has none.

    A Ray task error carries the remote traceback; its last line is the original message.
    """
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__
