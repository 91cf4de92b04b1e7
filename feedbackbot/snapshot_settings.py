"""Settings of the Parquet snapshots that persistence publishes for notebooks and the CLI.

A module of its own, importing nothing from feedbackbot, so that `feedbackbot.settings`
can add `SnapshotSettings` to `AppSettings` while `feedbackbot.snapshots` imports
`feedbackbot.settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SNAPSHOT_DIR = "data/snapshots"


class SnapshotSettings(BaseModel):
    """Settings of the snapshot publisher: its folder, publish interval, compaction and grace period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot_dir: str = Field(
        default=DEFAULT_SNAPSHOT_DIR,
        description="Folder where persistence publishes Parquet snapshots for notebooks and the "
        "export and query commands. A relative path is resolved against $FEEDBACKBOT_HOME, "
        "else the replica's working directory.",
    )
    snapshot_max_age_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Target age of the newest data that snapshot readers see, in seconds. "
        "Persistence publishes every half of it, so data is older only while a publish runs late.",
    )
    snapshot_compaction_deltas: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Delta files of one table after which compaction merges them with the base "
        "file into a new base. Readers open at most this many files plus one per table.",
    )
    snapshot_grace_s: float = Field(
        default=3600.0,
        ge=0,
        le=7 * 86_400,
        description="How long a file that compaction replaced stays on disk, in seconds. A "
        "reader that read the manifest less than this long ago can open every file it lists.",
    )
    snapshot_compaction_memory_mib: int = Field(
        default=1024,
        ge=64,
        le=1_048_576,
        description="Memory limit of the compaction's DuckDB connection, in MiB; beyond it "
        "DuckDB spills to a temporary folder inside snapshot_dir.",
    )

    @property
    def snapshot_publish_interval_s(self) -> float:
        """Seconds between two publishes that keep readers within snapshot_max_age_s."""
        return self.snapshot_max_age_s / 2
