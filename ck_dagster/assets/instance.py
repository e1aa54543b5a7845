"""A local Dagster home (SQLite storage in one folder) for the demo, tests and benchmarks."""

from pathlib import Path

from ck_dagster.fileio import atomic_write_text

#: telemetry off (nothing leaves the machine), and no first-visit pop-up in the UI.
INSTANCE_YAML = """\
# Written by ck_dagster: storage is SQLite in this folder.
telemetry:
  enabled: false
nux:
  enabled: false
"""


def ensure_dagster_home(home: Path) -> Path:
    """Create ``home`` with ck_dagster's dagster.yaml, leaving an existing dagster.yaml alone."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        atomic_write_text(home / "dagster.yaml", INSTANCE_YAML)
    return home
