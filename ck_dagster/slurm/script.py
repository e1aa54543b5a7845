"""SLURM batch scripts: the SBATCH header, the environment a job activates, the command.

Every value that comes from a user (paths, names, environment settings) is shell-quoted, so a
script is safe to read, to submit by hand with ``sbatch`` and passes ``bash -n``; a value that
cannot be quoted safely is refused, and every script is checked with ``bash -n`` before it is
written (:func:`check_script`).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ck_dagster.errors import CONTROL_CATEGORIES, CkError, printable
from ck_dagster.settings import Settings
from ck_dagster.slurm.profile import DELLA, ClusterProfile
from ck_dagster.slurm.resources import Resources

#: variables every job exports: offline model and dataset hubs, no telemetry, no stale caches.
OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    # tiktoken caches tokenizer files by path: a regenerated file would load stale.
    "TIKTOKEN_CACHE_DIR": "",
}


EXIT_MARKER_PREFIX = ".ck-exit-"


def exit_marker(log_path: Path, job_id: str) -> Path:
    """The file a job writes as its script exits, beside its log: its exit code.

    Followers look for it on every log read (a ``stat``, no controller call), so a job's end is
    seen within seconds however far the status calls have backed off; SLURM stays the judge
    of how it ended.
    """
    return Path(log_path).parent / f"{EXIT_MARKER_PREFIX}{job_id}"


def job_name_for(experiment: str, run: str, kind: str) -> str:
    """The SLURM job name of one run's job, e.g. ``ck:cap_sweep/rank4:train``.

    Names are unique per run and kind, so a job can be found again with ``squeue --name``
    after the process that submitted it is gone.
    """
    return f"ck:{experiment}/{run}:{kind}"


@dataclass(frozen=True)
class JobEnvironment:
    """The deployment's job settings: how a job activates its software (modules, a conda env, a
    venv, or none), and the cluster profile its requests follow.

    Configured per deployment (Dagster resource or ``CK_JOB_*``/``CK_CLUSTER_PROFILE``
    variables), not per experiment: the same experiment file runs on a laptop and on a cluster.
    """

    modules: tuple[str, ...] = ()
    conda_env: str | None = None
    venv: str | None = None
    profile: ClusterProfile = DELLA

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, profile: ClusterProfile = DELLA
    ) -> JobEnvironment:
        """Read ``CK_JOB_MODULES`` (space-separated), ``CK_JOB_CONDA_ENV`` and ``CK_JOB_VENV``
        (from ``environ``, default this process's environment) through the settings, for jobs
        that follow ``profile`` (``ck_dagster.finetune.cluster_profile`` reads the chosen one).

        With none of the ``CK_JOB_*`` set, jobs activate what the profile says, else the
        virtual environment this Python runs in (if any); ``CK_JOB_VENV=none`` turns that off.
        """
        settings = Settings.from_env(environ)
        return cls.chosen(settings.job_modules, settings.job_conda_env, settings.job_venv, profile)

    @classmethod
    def chosen(
        cls,
        modules: tuple[str, ...],
        conda_env: str | None,
        venv: str | None,
        profile: ClusterProfile = DELLA,
    ) -> JobEnvironment:
        """What jobs activate, given the deployment's settings (the variables, or the Dagster
        resource): these, else the profile's, else this Python's virtual environment; a
        ``venv`` of ``none`` (or empty) activates none."""
        if venv is None and not modules and conda_env is None:
            if profile.has_environment:
                return cls(profile.modules, profile.conda_env, profile.venv, profile)
            venv = sys.prefix if sys.prefix != sys.base_prefix else None
        if venv in ("", "none"):
            venv = None
        return cls(modules=modules, conda_env=conda_env, venv=venv, profile=profile)

    def lines(self) -> list[str]:
        """The shell lines that activate this environment."""
        lines = []
        if self.modules:
            lines += ["module purge", "module load " + " ".join(map(shlex.quote, self.modules))]
        if self.conda_env:
            lines += [
                'eval "$(conda shell.bash hook)"',
                f"conda activate {shlex.quote(self.conda_env)}",
            ]
        if self.venv:
            lines.append(f"source {shlex.quote(str(Path(self.venv) / 'bin' / 'activate'))}")
        return lines


@dataclass(frozen=True)
class JobScript:
    """Everything a batch script says: who it is, where it logs, what it asks for, what it runs."""

    job_name: str
    workdir: Path
    #: the job log; ``%j`` becomes the job id (SLURM's own pattern).
    log_path: Path
    resources: Resources
    command: Sequence[str]
    environment: JobEnvironment = field(default_factory=JobEnvironment)
    variables: Mapping[str, str] = field(default_factory=lambda: dict(OFFLINE_ENVIRONMENT))
    description: str = ""
    #: pass the script's own arguments on to the command (``sbatch script.slurm key=value``).
    forward_arguments: bool = True
    #: folders put first on PYTHONPATH (a user's recipe file).
    python_path: Sequence[str] = ()

    def render(self) -> str:
        """The script text."""
        r = self.resources
        header = [
            f"--job-name={self.job_name}",
            f"--output={self.log_path}",
            # a requeued job (preemption, node failure) appends instead of truncating its log
            "--open-mode=append",
            f"--chdir={self.workdir}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={r.cpus}",
            f"--mem={r.mem}",
            f"--time={r.time}",
        ]
        if r.gpus:
            header.append(f"--gres=gpu:{r.gpus}")
        header += [
            f"--{name}={value}"
            for name, value in (
                ("partition", r.partition),
                ("constraint", r.constraint),
                ("account", r.account),
                ("qos", r.qos),
            )
            if value
        ]
        lines = ["#!/bin/bash"]
        if self.description:
            lines += [f"# {printable(line)}" for line in self.description.splitlines()]
        lines += [f"#SBATCH {_quote_option(option)}" for option in header]
        lines += ["", "set -eo pipefail"]
        lines += self._exit_marker_lines()
        lines += self.environment.lines()
        lines += [f"export {name}={shlex.quote(value)}" for name, value in self.variables.items()]
        if self.python_path:
            folders = ":".join(shlex.quote(str(folder)) for folder in self.python_path)
            lines.append(f'export PYTHONPATH={folders}"${{PYTHONPATH:+:$PYTHONPATH}}"')
        # torch would start a thread per core of the node, not per core the job was given
        lines.append(f'export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-{r.cpus}}}"')
        lines += [
            f"cd {shlex.quote(str(self.workdir))}",
            'echo "[ck_dagster] job ${SLURM_JOB_ID:-local} on $(hostname) started $(date -Is)"',
        ]
        command = " ".join(shlex.quote(str(part)) for part in self.command)
        lines.append(f'{command} "$@"' if self.forward_arguments else command)
        return "\n".join(lines) + "\n"

    def _exit_marker_lines(self) -> list[str]:
        """Write :func:`exit_marker` when the script exits, however it exits (a requeued job
        removes its previous run's marker first)."""
        folder = str(self.log_path.parent)
        if "%" in folder:  # a per-job log folder: no fixed place to leave the marker
            return []
        return [
            f'CK_EXIT_MARKER={shlex.quote(folder)}/{EXIT_MARKER_PREFIX}"${{SLURM_JOB_ID:-local}}"',
            'rm -f "$CK_EXIT_MARKER"',
            'trap \'echo "$?" > "$CK_EXIT_MARKER"\' EXIT',
        ]


def check_script(text: str) -> str:
    """``text`` when ``bash -n`` parses it; a :class:`CkError` otherwise. Writers call it
    before a script is written (rendering stays pure: no process)."""
    result = subprocess.run(
        ["bash", "-n"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise CkError(
            f"the job script would not parse (bash -n: {result.stderr.strip()}); "
            "nothing was written. Please report this: a value reached it unquoted"
        )
    return text


def _quote_option(option: str) -> str:
    """``--output=/a b/x`` -> ``--output='/a b/x'``: sbatch reads quotes in #SBATCH lines.

    sbatch reads a backslash as an escape even inside quotes, and a line ends at a newline:
    values holding either (or any control character) cannot be quoted, and are refused.
    """
    name, _, value = option.partition("=")
    if "\\" in value or any(unicodedata.category(ch) in CONTROL_CATEGORIES for ch in value):
        raise CkError(
            f"#SBATCH {name} cannot hold {value!r}: a backslash or control "
            "character cannot be quoted in #SBATCH lines"
        )
    return f"{name}={shlex.quote(value)}" if value else name
