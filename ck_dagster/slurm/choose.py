"""Which launcher runs jobs here: SLURM or the local back-end (the factory over both)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping

from ck_dagster.errors import CkError
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.local import LocalLauncher

_log = logging.getLogger(__name__)


def choose_launcher(env: Mapping[str, str] = os.environ,
                    log: Callable[[str], None] = _log.info) -> Launcher:
    """The launcher for this machine: ``CK_LAUNCHER=slurm|local``, else SLURM when ``sbatch``
    is on PATH, else local. Says which one and why through ``log``."""
    choice = env.get("CK_LAUNCHER", "").strip().lower()
    if choice not in ("", "slurm", "local"):
        raise CkError(f"CK_LAUNCHER={env['CK_LAUNCHER']!r} is not a launcher: set it to 'slurm' "
                      "or 'local', or unset it to use SLURM when sbatch is on PATH")
    if choice:
        why = f"CK_LAUNCHER={choice}"
    else:
        sbatch = shutil.which("sbatch", path=env.get("PATH"))
        choice = "slurm" if sbatch else "local"
        why = f"sbatch found at {sbatch}" if sbatch else "no sbatch on PATH"
    launcher: Launcher
    if choice == "slurm":
        launcher = SlurmLauncher()
    else:
        launcher = LocalLauncher(state_dir=env.get("CK_LOCAL_JOBS_DIR") or None)
    log(f"launcher: {choice} ({why})")
    return launcher
