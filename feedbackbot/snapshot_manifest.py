"""The snapshot manifest: manifest.json, which lists the current Parquet files of each table.

`feedbackbot.snapshots.SnapshotPublisher` writes it, replacing the file atomically, and
readers such as `feedbackbot.analysis` read it to learn which files to open. See
`feedbackbot.snapshots` for the guarantees that the file set gives readers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from feedbackbot.errors import SnapshotError, SnapshotNotFound

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

FileKind = Literal["base", "delta"]
FILE_KINDS = ("base", "delta")


@dataclass(frozen=True)
class SnapshotFile:
    """One Parquet file of a table as the manifest lists it.

    `path` is relative to the snapshot folder, with "/" separators, so that the folder can
    be moved. The file contains no row with change_seq above `max_change_seq`.
    """

    path: str
    kind: FileKind
    rows: int
    max_change_seq: int


@dataclass(frozen=True)
class RetiredFile:
    """A file that compaction replaced, kept until `retired_at` plus the grace period."""

    path: str
    retired_at: datetime


@dataclass(frozen=True)
class Manifest:
    """The contents of manifest.json: the current files of each table and the watermark.

    `watermark` is the highest change_seq that the files cover. `checked_at` is when the
    publisher last compared the database with the snapshot, so the data is complete up to
    that time. `database` is the path of the database file the snapshot was copied from.
    """

    generation: int
    database: str
    watermark: int
    checked_at: datetime
    next_file_number: int
    tables: Mapping[str, tuple[SnapshotFile, ...]]
    retired: tuple[RetiredFile, ...] = ()

    def files(self, table: str) -> tuple[SnapshotFile, ...]:
        """Return the current files of a table, base first."""
        return self.tables.get(table, ())

    def delta_count(self, table: str) -> int:
        """Return the number of delta files of a table."""
        return sum(1 for snapshot_file in self.files(table) if snapshot_file.kind == "delta")

    def referenced_paths(self) -> set[str]:
        """Return the relative paths of every current and retired file."""
        current = {snapshot_file.path for files in self.tables.values() for snapshot_file in files}
        return current | {retired.path for retired in self.retired}

    def to_json(self) -> str:
        """Serialise the manifest as indented JSON."""
        document = {
            "format": MANIFEST_FORMAT,
            "generation": self.generation,
            "database": self.database,
            "watermark": self.watermark,
            "checked_at": self.checked_at.isoformat(),
            "next_file_number": self.next_file_number,
            "tables": {
                table: [
                    {"path": f.path, "kind": f.kind, "rows": f.rows, "max_change_seq": f.max_change_seq}
                    for f in files
                ]
                for table, files in self.tables.items()
            },
            "retired": [
                {"path": retired.path, "retired_at": retired.retired_at.isoformat()} for retired in self.retired
            ],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """Parse the JSON that `to_json` writes; raises ValueError, KeyError or TypeError when it is malformed."""
        document = json.loads(text)
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(
                f"format {document.get('format')!r} is not {MANIFEST_FORMAT}; a newer feedbackbot may have written it"
            )

        tables = {
            table: tuple(
                SnapshotFile(
                    path=str(entry["path"]),
                    kind=_file_kind(entry["kind"]),
                    rows=int(entry["rows"]),
                    max_change_seq=int(entry["max_change_seq"]),
                )
                for entry in entries
            )
            for table, entries in document["tables"].items()
        }
        retired = tuple(
            RetiredFile(path=str(entry["path"]), retired_at=datetime.fromisoformat(entry["retired_at"]))
            for entry in document["retired"]
        )
        return cls(
            generation=int(document["generation"]),
            database=str(document["database"]),
            watermark=int(document["watermark"]),
            checked_at=datetime.fromisoformat(document["checked_at"]),
            next_file_number=int(document["next_file_number"]),
            tables=tables,
            retired=retired,
        )


def _file_kind(value: object) -> FileKind:
    if value not in FILE_KINDS:
        raise ValueError(f"file kind {value!r} is not one of {', '.join(FILE_KINDS)}")
    return value


def read_manifest(folder: Path) -> Manifest:
    """Read `folder`/manifest.json.

    Raises SnapshotNotFound when it does not exist and SnapshotError when it cannot be read
    or parsed.
    """
    path = folder / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise SnapshotNotFound(
            f"No snapshot found in {folder}: {path} does not exist. The persistence deployment "
            "publishes the first one a few seconds after it starts (make run). If the service "
            "runs, set FEEDBACKBOT_SNAPSHOT_DIR (or pass the folder) to its snapshot_dir setting."
        ) from error
    except OSError as error:
        raise SnapshotError(f"Failed to read the snapshot manifest {path}: {error}. Check its permissions.") from error

    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise SnapshotError(
            f"The snapshot manifest {path} is invalid: {error}. Stop the persistence deployment, "
            "delete the folder, and start it again: it publishes a full copy."
        ) from error
