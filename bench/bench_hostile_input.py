"""Benchmark: reading the worst experiment files of up to 1 MB (issue 15), time and peak memory.

ck_dagster: ``read_experiment`` (libyaml events pre-pass, bounds, then the checks), one fresh
process per file, its own peak memory (VmHWM) and wall time.

Baseline: PyYAML's pure-Python ``SafeLoader`` as ck_dagster read files before (without its
per-path line index, which made the alias bomb far worse: 36 s and 4.6 GB in the issue's probe
for 7 levels; the 7-level bomb here is left out of the baseline for that reason), capped at
60 s and 2 GB.

Run: .venv/bin/python bench/bench_hostile_input.py
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = 999_000
CK = """
import sys, time
from ck_dagster.experiment.load import read_experiment
start = time.perf_counter()
read_experiment(sys.argv[1])
"""
BASELINE = """
import sys, time, yaml
start = time.perf_counter()
try:
    yaml.load(open(sys.argv[1]).read(), Loader=yaml.SafeLoader)
except (yaml.YAMLError, RecursionError):
    pass
"""
#: the reading's own seconds, and the process's peak memory.
REPORT = """
from pathlib import Path
print("SECONDS", time.perf_counter() - start)
print(Path('/proc/self/status').read_text())
"""


def files(folder: Path) -> dict[str, Path]:
    bomb = "a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 8)
    )
    texts = {
        "alias bomb, 7 levels (1.1 KB)": bomb,
        "one 1 MB comment": "# " + "x" * SIZE,
        "1 MB flow list of numbers": "a: [" + "0," * (SIZE // 2 - 4) + "0]",
        "70 000 keys": "".join(f"k{i}: {i}\n" for i in range(SIZE // 14)),
        "block nesting 1300 deep": "".join(" " * i + f"k{i}:\n" for i in range(1300)),
    }
    paths = {}
    for index, (name, text) in enumerate(texts.items()):
        paths[name] = folder / f"{index}.yaml"
        paths[name].write_text(text[:SIZE])
    return paths


def measure(code: str, path: Path) -> tuple[float, float] | None:
    """(seconds reading, peak MB) of a fresh process running ``code`` on ``path``; None if it
    ran past 60 s or 2 GB."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    try:
        result = subprocess.run(
            [sys.executable, "-c", code + REPORT, str(path)],
            text=True,
            capture_output=True,
            timeout=60,
            preexec_fn=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    seconds = re.search(r"SECONDS (\S+)", result.stdout)
    peak = re.search(r"VmHWM:\s+(\d+) kB", result.stdout)
    if result.returncode != 0 or not seconds or not peak:
        return None
    return float(seconds.group(1)), int(peak.group(1)) / 1024


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'file (at most 1 MB)':32} {'ck_dagster':>16} {'PyYAML SafeLoader':>22}")
        figures = []
        for name, path in files(Path(tmp)).items():
            mine = measure(CK, path)
            assert mine is not None, name
            base = None if name.startswith("alias bomb") else measure(BASELINE, path)
            shown = (
                "36 s, 4.6 GB (issue)"
                if name.startswith("alias bomb")
                else "over 60 s or 2 GB"
                if base is None
                else f"{base[0]:.2f} s, {base[1]:.0f} MB"
            )
            figures.append((mine, base))
            print(f"{name:32} {mine[0]:6.2f} s, {mine[1]:4.0f} MB {shown:>22}")
        print("(seconds reading the file; peak memory of the whole process)")
        print(
            json.dumps(
                {
                    "bench": "hostile_input",
                    "worst_s": max(mine[0] for mine, _ in figures),
                    "peak_mb": max(mine[1] for mine, _ in figures),
                    "baseline_worst_s": max(base[0] for _, base in figures if base),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
