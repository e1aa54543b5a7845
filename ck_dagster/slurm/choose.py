"""Which launcher runs jobs here: SLURM or the local back-end (the factory over both)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping

from ck_dagster.errors import CkError
from ck_dagster.settings import Settings
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.local import LocalLauncher

_log = logging.getLogger(__name__)


def choose_launcher(
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = _log.info,
    *,
    kind: str | None = None,
    local_jobs_dir: str | None = None,
) -> Launcher:
    """The launcher for this machine: ``kind``, else ``CK_LAUNCHER=slurm|local``, else SLURM
    when ``sbatch`` is on PATH, else local, keeping its records in ``local_jobs_dir``, else
    ``CK_LOCAL_JOBS_DIR`` (``env``: the environment to read, default this process's; the
    Dagster resource passes none and gives its own fields). Says which one and why through
    ``log``, and, for SLURM, each retry of an unanswering controller."""
    settings = Settings.from_env(env)
    choice = (kind or settings.launcher).strip().lower()
    if choice not in ("", "slurm", "local"):
        raise CkError(
            f"CK_LAUNCHER={choice!r} is not a launcher: set it to 'slurm' "
            "or 'local', or unset it to use SLURM when sbatch is on PATH"
        )
    if choice:
        why = (
            f"launcher resource kind={choice}, from CK_LAUNCHER or the resource's config"
            if kind
            else f"CK_LAUNCHER={choice}"
        )
    else:
        sbatch = shutil.which("sbatch", path=settings.path)
        choice = "slurm" if sbatch else "local"
        why = f"sbatch found at {sbatch}" if sbatch else "no sbatch on PATH"
    launcher: Launcher
    if choice == "slurm":
        launcher = SlurmLauncher(log=log)
    else:
        launcher = LocalLauncher(state_dir=local_jobs_dir or settings.local_jobs_dir)
    log(f"launcher: {choice} ({why})")
    return launcher
