"""The preflight: would the cluster ever run each job? Asked before anything is submitted.

``sinfo`` says which partitions exist and what their nodes offer (features for
``--constraint``, GRES for ``--gres``); ``sbatch --test-only`` then asks the controller about
the rest of the request (account, QoS, time and memory limits) without queueing anything.
When no SLURM controller answers, there is nothing to ask and the preflight is skipped.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from ck_dagster.errors import name_list
from ck_dagster.slurm.resources import Resources

#: seconds to wait for sinfo or sbatch --test-only.
TIMEOUT_S = 30
_FIX = "set `compute.{key}` (for the experiment or the run), or choose a cluster profile"
_FEATURE = re.compile(r"[A-Za-z0-9_.-]+")
_GPUS = re.compile(r"^gpu(?::[^:(,]+)?:(\d+)")


@dataclass(frozen=True)
class Partition:
    """What one partition's nodes offer."""

    name: str
    features: frozenset[str] = field(default_factory=frozenset)
    #: the most GPUs one node of the partition has.
    gpus_per_node: int = 0


@dataclass(frozen=True)
class Cluster:
    """What ``sinfo`` says about the cluster."""

    partitions: dict[str, Partition]
    default_partition: str | None


@dataclass(frozen=True)
class Refusal:
    """A job the cluster could never run: which run, what it asks for, what is missing (shown
    by :func:`summarize`)."""

    run: str
    request: str
    reason: str


def _run(args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def read_cluster() -> Cluster | None:
    """The cluster's partitions as ``sinfo`` reports them; None when no controller answers."""
    try:
        result = _run(["sinfo", "--noheader", "--Node", "--format=%P|%f|%G"], None)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    found: dict[str, tuple[set[str], int]] = {}
    default = None
    for line in result.stdout.splitlines():
        name, _, rest = line.strip().partition("|")
        features, _, gres = rest.partition("|")
        if not name:
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        names, gpus = found.setdefault(name, (set(), 0))
        names.update(f for f in features.split(",") if f and f != "(null)")
        found[name] = (names, max(gpus, _gpus(gres)))
    return Cluster({n: Partition(n, frozenset(f), g) for n, (f, g) in found.items()}, default)


def _gpus(gres: str) -> int:
    """GPUs in a node's GRES list (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    return sum(int(m.group(1)) for part in gres.split(",") if (m := _GPUS.match(part)))


def describe_request(resources: Resources) -> str:
    """A request as the batch script asks for it (``partition=nomig, constraint=gpu80, ...``)."""
    parts = [f"partition={resources.partition or 'default'}"]
    if resources.constraint:
        parts.append(f"constraint={resources.constraint}")
    parts += [f"gres=gpu:{resources.gpus}"] if resources.gpus else []
    parts += [f"mem={resources.mem}", f"time={resources.time}"]
    parts += [f"{k}={v}" for k, v in (("account", resources.account), ("qos", resources.qos)) if v]
    return ", ".join(parts)


def check_request(cluster: Cluster, resources: Resources) -> list[str]:
    """What ``cluster`` lacks for ``resources`` (partition, features, GPUs per node)."""
    name = resources.partition or cluster.default_partition
    if resources.partition and resources.partition not in cluster.partitions:
        return [
            f"partition `{resources.partition}` does not exist on this cluster (it has "
            f"{_names(cluster.partitions)}): {_FIX.format(key='partition')}"
        ]
    partitions = (
        [cluster.partitions[name]]
        if name in cluster.partitions
        else list(cluster.partitions.values())
    )
    where = f"partition `{name}`" if name else "this cluster"
    reasons = []
    offered = frozenset().union(*(p.features for p in partitions))
    missing = sorted(set(_FEATURE.findall(resources.constraint or "")) - offered)
    if missing:
        reasons.append(
            f"no node of {where} has feature {_names(missing)} (features there: "
            f"{_names(offered) or 'none'}): {_FIX.format(key='constraint')}"
        )
    most = max((p.gpus_per_node for p in partitions), default=0)
    if resources.gpus > most:
        reasons.append(
            f"{resources.gpus} GPU(s) asked for, but the nodes of {where} have at "
            f"most {most}: {_FIX.format(key='gpus')}"
        )
    return reasons


def sbatch_test_only(script: str) -> str | None:
    """Why ``sbatch --test-only`` refuses a batch script (nothing is queued), or None."""
    try:
        result = _run(["sbatch", "--test-only"], script)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sbatch --test-only did not answer ({exc})"
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return "SLURM refuses it: " + ("; ".join(lines) or f"exit code {result.returncode}")


def preflight(jobs: Iterable[tuple[str, Resources, str]]) -> list[Refusal] | None:
    """Refusals for (run name, resources, batch script) jobs the cluster could never run; None
    when no SLURM controller answers (nothing could be checked)."""
    cluster = read_cluster()
    if cluster is None:
        return None
    refusals = []
    # The controller judges a script by its request alone (job name, log and folder aside),
    # so runs asking for the same resources share one sbatch: 1000 runs of a sweep, one call.
    verdicts: dict[Resources, list[str]] = {}
    for name, resources, script in jobs:
        if resources not in verdicts:
            reasons = check_request(cluster, resources)
            if not reasons:
                refused = sbatch_test_only(script)
                reasons = [refused] if refused else []
            verdicts[resources] = reasons
        refusals += [Refusal(name, describe_request(resources), r) for r in verdicts[resources]]
    return refusals


def summarize(refusals: Iterable[Refusal]) -> list[str]:
    """One line per distinct (request, reason), naming its runs: a 1000-run sweep that asks
    for a partition the cluster lacks gets one line, not 1000."""
    runs: dict[tuple[str, str], list[str]] = {}
    for refusal in refusals:
        runs.setdefault((refusal.request, refusal.reason), []).append(f"`{refusal.run}`")
    return [
        f"run{'s' if len(names) > 1 else ''} {name_list(names)} ({request}): {reason}"
        for (request, reason), names in runs.items()
    ]


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))
