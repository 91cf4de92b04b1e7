"""API keys of the gateway: a JSON store of key hashes, and the Nginx map rendered from it.

The store (data/api-keys.json by default) never contains a key, only its SHA-256. Nginx
hashes each request's X-API-Key header with njs (gateway/api-key-hash.js) and looks the
hash up in the map file `api-keys.map` in the gateway's run folder, which maps the hash of
every key that is not revoked to "ROLE KEY_ID". The key id is "k-" and the first 12 hex
digits of the hash. The gateway forwards it to the graph as X-Feedbackbot-Key-Id, and it is
safe to print and log.

Every change holds an exclusive lock on `<store>.lock` while it reads the store, writes a
new store file and renames it over the old one. It renders the map file the same way, so
concurrent `feedbackbot keys` calls cannot lose a key and Nginx never reads a half-written
map. `reload_gateway` then sends SIGHUP to the gateway's master process. Nginx loads the new
map into new worker processes while the old ones finish the requests they are serving.

This module uses only the standard library, because gateway/start.sh runs
`python -m feedbackbot.keys render` with whichever Python it finds.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from feedbackbot.errors import KeyNotFound, KeyStoreError

logger = logging.getLogger(__name__)

# submit: POST /v1/feedback and /v1/feedback:batch. analyst: GET routes under /v1/feedback/.
# admin: every route. gateway/nginx.conf.template enforces this per route.
ROLES = ("submit", "analyst", "admin")
KEYS_FILE_ENV = "FEEDBACKBOT_KEYS_FILE"
GATEWAY_DIR_ENV = "FEEDBACKBOT_GATEWAY_DIR"
DEFAULT_KEYS_FILE = Path("data") / "api-keys.json"
# Keys of the plain "ROLE KEY" file that versions before the key store used.
LEGACY_KEYS_FILE_NAME = "api-keys.txt"
MAP_FILE_NAME = "api-keys.map"
STORE_VERSION = 1
MAX_LABEL_CHARS = 200
# How long reload_gateway waits for Nginx to start workers with the new map.
RELOAD_TIMEOUT_S = 10.0

# Keys are plain tokens, so that a key never needs quoting in a header or a shell.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
KEY_ID_PATTERN = re.compile(r"^k-[0-9a-f]{12}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

Result = TypeVar("Result")


@dataclass(frozen=True)
class KeyRecord:
    """One API key in the store: its id, role, hash, label, and creation and revocation times."""

    id: str
    role: str
    sha256: str
    label: str
    created_at: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def new_api_key() -> str:
    """Return a new random API key of 192 bits.

    The prefix makes keys easy to spot in leaked text, and keeps a key from starting with
    "-", which command-line parsers would take for an option.
    """
    return "fbk_" + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of a key, the same value that gateway/api-key-hash.js computes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id_for(key_hash: str) -> str:
    return "k-" + key_hash[:12]


def check_role(role: str) -> str:
    """Return `role` if it is one of ROLES, else raise KeyStoreError naming the valid roles."""
    if role not in ROLES:
        raise KeyStoreError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return role


def check_label(label: str) -> str:
    """Return the label with outer spaces removed; raise KeyStoreError if it is too long or has control characters."""
    label = label.strip()
    if len(label) > MAX_LABEL_CHARS:
        raise KeyStoreError(f"invalid label: {len(label)} characters, at most {MAX_LABEL_CHARS} are allowed")
    if any(ord(character) < 32 or ord(character) == 127 for character in label):
        raise KeyStoreError("invalid label: it contains a control character such as a line break; use plain text")
    return label


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def default_keys_file(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Return $FEEDBACKBOT_KEYS_FILE, else data/api-keys.json in the current directory."""
    value = environ.get(KEYS_FILE_ENV, "").strip()
    return Path(value) if value else DEFAULT_KEYS_FILE


def default_gateway_dir(keys_file: Path, environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Return $FEEDBACKBOT_GATEWAY_DIR, else the folder `gateway` next to the key store, as `make run` lays it out."""
    value = environ.get(GATEWAY_DIR_ENV, "").strip()
    return Path(value) if value else keys_file.parent / "gateway"


class KeyStore:
    """The key store file at `path`. With `gateway_dir`, every change also renders that folder's map file."""

    def __init__(self, path: Path, gateway_dir: Path | None = None) -> None:
        self.path = path
        self.gateway_dir = gateway_dir

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def map_path(self) -> Path | None:
        return self.gateway_dir / MAP_FILE_NAME if self.gateway_dir else None

    # -- reading --------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> list[KeyRecord]:
        """Return every record of the store, revoked ones included; [] if the file does not exist."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as error:
            raise KeyStoreError(
                f"cannot read the key store {self.path}: {error.strerror or error}; "
                "run the command as the user that owns it, or fix its permissions"
            ) from error

        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise KeyStoreError(
                f"{self.path} is not a valid key store: invalid JSON ({error}). If it is an old "
                f"plain file with 'ROLE KEY' lines, import it with `feedbackbot keys import {self.path} "
                "--keys-file data/api-keys.json`"
            ) from error
        return _parse_store(document, self.path)

    def get(self, key_id: str) -> KeyRecord:
        return _find(self.load(), key_id, self.path)

    # -- changing -------------------------------------------------------------------------

    def create(self, role: str, label: str = "") -> tuple[KeyRecord, str]:
        """Add a new key with `role` and `label`. Returns its record and the key, which is stored nowhere."""
        role = check_role(role)
        label = check_label(label)

        def add(records: list[KeyRecord]) -> tuple[KeyRecord, str]:
            return _add_new_key(records, role, label)

        return self._change(add)

    def revoke(self, key_id: str) -> tuple[KeyRecord, bool]:
        """Revoke the key `key_id`. Returns its record and False if it was already revoked."""

        def mark_revoked(records: list[KeyRecord]) -> tuple[KeyRecord, bool]:
            record = _find(records, key_id, self.path)
            if record.revoked:
                return record, False
            revoked = _replace(records, record, revoked_at=utc_now())
            return revoked, True

        return self._change(mark_revoked)

    def rotate(self, key_id: str) -> tuple[KeyRecord, KeyRecord, str]:
        """Revoke the key `key_id` and add a new key with its role and label.

        Returns the revoked record, the new record and the new key. Both happen in one
        write, so the role never ends up with neither or both keys active.
        """

        def replace_key(records: list[KeyRecord]) -> tuple[KeyRecord, KeyRecord, str]:
            old = _find(records, key_id, self.path)
            if old.revoked:
                raise KeyStoreError(
                    f"key {key_id} was revoked at {old.revoked_at}, so it cannot be rotated; "
                    f"create a new key with `feedbackbot keys create --role {old.role}`"
                )
            revoked = _replace(records, old, revoked_at=utc_now())
            new, key = _add_new_key(records, old.role, old.label)
            return revoked, new, key

        return self._change(replace_key)

    def import_plain(self, plain_file: Path) -> list[KeyRecord]:
        """Hash the keys of an old "ROLE KEY" file into the store, then delete that file.

        Keys already in the store are skipped. Returns the records added. The plain file is
        deleted only after the store and the map file are written.
        """
        try:
            text = plain_file.read_text(encoding="utf-8")
        except OSError as error:
            raise KeyStoreError(f"cannot read {plain_file}: {error.strerror or error}") from error
        entries = _parse_plain_keys(text, plain_file)

        def add_all(records: list[KeyRecord]) -> list[KeyRecord]:
            known = {record.sha256 for record in records}
            added = []
            for line_number, role, key in entries:
                key_hash = hash_key(key)
                if key_hash in known:
                    continue
                known.add(key_hash)
                record = KeyRecord(
                    id=key_id_for(key_hash),
                    role=role,
                    sha256=key_hash,
                    label=f"imported from {plain_file.name} line {line_number}",
                    created_at=utc_now(),
                )
                if any(existing.id == record.id for existing in records):
                    raise KeyStoreError(
                        f"{plain_file} line {line_number}: its key id {record.id} is already taken by "
                        "another key; replace that line's key with a new one and import again"
                    )
                records.append(record)
                added.append(record)
            return added

        added = self._change(add_all)
        plain_file.unlink()
        logger.info("Imported %d keys from %s into %s and deleted the plain file", len(added), plain_file, self.path)
        return added

    def render(self) -> Path:
        """Render the map file from the store as it is, under the lock. Raises KeyStoreError without a gateway_dir."""
        if self.map_path is None:
            raise KeyStoreError("no gateway folder given, so there is no map file to render")
        with self._locked():
            records = self.load()
            _write_atomically(self.map_path, render_map(records, self.path), mode=0o644)
        return self.map_path

    def _change(self, change: Callable[[list[KeyRecord]], Result]) -> Result:
        """Apply `change` to the records under the lock, then write the store and the map file."""
        with self._locked():
            records = self.load()
            result = change(records)
            document = {"version": STORE_VERSION, "keys": [asdict(record) for record in records]}
            _write_atomically(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)
            if self.map_path is not None:
                _write_atomically(self.map_path, render_map(records, self.path), mode=0o644)
        return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise KeyStoreError(
                f"cannot open the lock file {self.lock_path}: {error.strerror or error}; "
                "check that its folder exists and is writable"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)


def render_map(records: list[KeyRecord], source: Path) -> str:
    """Return the body of the Nginx map from key hash to "ROLE KEY_ID", for keys that are not revoked.

    Every value is checked by _parse_store, so hashes are hex and roles are plain words, and
    nothing in the file can break out of the map syntax.
    """
    lines = [f"# Rendered by feedbackbot.keys from {source.name}; edits here are overwritten.\n"]
    for record in records:
        if not record.revoked:
            lines.append(f'"{record.sha256}" "{record.role} {record.id}";\n')
    return "".join(lines)


def reload_gateway(gateway_dir: Path, timeout_s: float = RELOAD_TIMEOUT_S) -> int | None:
    """Send SIGHUP to the gateway of `gateway_dir` and wait until it runs workers with the new map.

    Returns the master's process id, or None if no gateway runs there. Nginx starts new
    workers only after it has read the new configuration, and the old workers finish the
    requests they are serving, so no request is dropped. Raises KeyStoreError if no new
    worker appears within `timeout_s`, which means Nginx rejected the configuration.
    """
    pid_file = gateway_dir / "nginx.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not is_alive(pid):
        return None

    old_workers = _children(pid)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return None
    except PermissionError as error:
        raise KeyStoreError(
            f"cannot signal the gateway (pid {pid}): {error.strerror}; run the command as the user "
            "that started the gateway, or run `gateway/start.sh reload` as that user"
        ) from error
    logger.info("Sent SIGHUP to the gateway (pid %d) to load the new key map", pid)

    # The new map is in force once a new worker runs and no old worker accepts connections
    # any more: an old worker renames itself "shutting down" when it stops accepting.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _children(pid) - old_workers and not _accepting(old_workers):
            return pid
        time.sleep(0.05)
    raise KeyStoreError(
        f"the gateway (pid {pid}) started no new workers within {timeout_s:.0f} s after the reload "
        f"signal, so it still uses the old keys; see {gateway_dir / 'error.log'}"
    )


# -- helpers ---------------------------------------------------------------------------------


def _add_new_key(records: list[KeyRecord], role: str, label: str) -> tuple[KeyRecord, str]:
    """Append a record for a new random key and return it with the key."""
    used_ids = {record.id for record in records}
    while True:
        key = new_api_key()
        key_hash = hash_key(key)
        # Ids are 48 bits of the hash, so a clash is very unlikely, but it would merge the
        # idempotency space of two keys, so a clashing key is drawn again.
        if key_id_for(key_hash) not in used_ids:
            break
    record = KeyRecord(id=key_id_for(key_hash), role=role, sha256=key_hash, label=label, created_at=utc_now())
    records.append(record)
    return record, key


def _find(records: list[KeyRecord], key_id: str, path: Path) -> KeyRecord:
    for record in records:
        if record.id == key_id:
            return record
    hint = "ids look like k- and 12 hex digits" if not KEY_ID_PATTERN.match(key_id) else "it is not in the store"
    raise KeyNotFound(f"unknown key id {key_id!r} ({hint}); `feedbackbot keys list --keys-file {path}` shows the ids")


def _replace(records: list[KeyRecord], old: KeyRecord, **changes: str) -> KeyRecord:
    new = KeyRecord(**{**asdict(old), **changes})
    records[records.index(old)] = new
    return new


def _parse_store(document: object, path: Path) -> list[KeyRecord]:
    """Check the JSON document of a store and return its records; raise KeyStoreError naming the bad entry."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyStoreError(f'{path} is not a valid key store: expected an object with a "keys" list')
    if document.get("version") != STORE_VERSION:
        raise KeyStoreError(
            f"{path} has key store version {document.get('version')!r}, but this feedbackbot reads "
            f"version {STORE_VERSION}; use the feedbackbot version that wrote it"
        )

    records = []
    ids = set()
    fields = set(KeyRecord.__dataclass_fields__)
    for index, entry in enumerate(document["keys"]):
        where = f"{path} key #{index + 1}"
        if not isinstance(entry, dict) or set(entry) != fields:
            raise KeyStoreError(f"{where} is invalid: expected exactly the fields {', '.join(sorted(fields))}")
        record = KeyRecord(**entry)
        if record.role not in ROLES:
            raise KeyStoreError(f"{where} has the invalid role {record.role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(record.sha256, str) or not SHA256_PATTERN.match(record.sha256):
            raise KeyStoreError(f"{where} has an invalid sha256: expected 64 lowercase hex digits")
        if record.id != key_id_for(record.sha256):
            raise KeyStoreError(f"{where} has the id {record.id!r}, but its hash gives {key_id_for(record.sha256)}")
        if record.id in ids:
            raise KeyStoreError(f"{where} repeats the key id {record.id}; remove one of the two entries")
        if not isinstance(record.label, str) or not isinstance(record.created_at, str):
            raise KeyStoreError(f"{where} is invalid: label and created_at must be strings")
        if record.revoked_at is not None and not isinstance(record.revoked_at, str):
            raise KeyStoreError(f"{where} is invalid: revoked_at must be a string or null")
        ids.add(record.id)
        records.append(record)
    return records


def _parse_plain_keys(text: str, path: Path) -> list[tuple[int, str, str]]:
    """Parse the "ROLE KEY" lines of an old plain keys file into (line number, role, key)."""
    entries = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeyStoreError(f"{path} line {line_number}: expected 'ROLE KEY' and nothing more")
        role, key = parts
        if role not in ROLES:
            raise KeyStoreError(f"{path} line {line_number}: invalid role {role!r}; use one of {', '.join(ROLES)}")
        if not KEY_PATTERN.match(key):
            raise KeyStoreError(f"{path} line {line_number}: invalid key; use 16 to 128 letters, digits, - or _")
        entries.append((line_number, role, key))
    return entries


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write `text` to a temporary file next to `path`, flush it to disk and rename it over `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise KeyStoreError(f"cannot write {path}: {error.strerror or error}; check that its folder is writable") from error
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise KeyStoreError(f"cannot write {path}: {error.strerror or error}; the old file is unchanged") from error

    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def is_alive(pid: int) -> bool:
    """Return whether process `pid` runs: it exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited but still accepts signal 0.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _accepting(workers: set[int]) -> set[int]:
    """Return the Nginx workers of `workers` that still run and are not shutting down."""
    accepting = set()
    for worker in workers:
        try:
            title = Path(f"/proc/{worker}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if title and b"shutting down" not in title:
            accepting.add(worker)
    return accepting


def _children(pid: int) -> set[int]:
    """Return the process ids whose parent is `pid`, read from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if parent == pid:
            children.add(int(entry.name))
    return children


def main(argv: list[str] | None = None) -> int:
    """Render the map file of a gateway folder from the store; gateway/start.sh runs this before Nginx starts."""
    parser = argparse.ArgumentParser(prog="python -m feedbackbot.keys", description=main.__doc__)
    parser.add_argument("action", choices=["render"])
    parser.add_argument("--keys-file", type=Path, required=True, help="the key store, a JSON file")
    parser.add_argument("--gateway-dir", type=Path, required=True, help="the gateway's run folder")
    args = parser.parse_args(argv)

    store = KeyStore(args.keys_file, args.gateway_dir)
    try:
        if not store.exists():
            raise KeyStoreError(_missing_store_message(args.keys_file))
        store.render()
    except KeyStoreError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
    return 0


def _missing_store_message(path: Path) -> str:
    legacy = path.with_name(LEGACY_KEYS_FILE_NAME)
    if legacy.exists():
        return (
            f"key store {path} not found, but {legacy} with plain keys exists. Import it once with "
            f"`feedbackbot keys import {legacy} --keys-file {path}`, which stores only hashes and deletes "
            "the plain file"
        )
    return f"key store {path} not found; create a key with `feedbackbot keys create --role submit --keys-file {path}`"


if __name__ == "__main__":
    sys.exit(main())
