"""Benchmark: the Dagster UI's partitions page of ``checkpoint`` for an experiment of N runs,
loaded in a real headless Chromium (the browser tests' Selenium driver).

A fresh SQLite Dagster home gets the N-run sweep of ``bench_configs.py`` registered with
``ck-dagster register``; dagster-webserver serves it (no daemon, so nothing is launched). The
page is timed from navigation until it shows its partition counts and the first run, twice
over: before training (every partition missing) and after (every partition materialized, as
a finished sweep's are; recorded here as runless materializations). The first load of each
state is cold for the server's caches; the figure is the median of the loads after it. The
baseline is the same page for a 10-run experiment, measured the same way in the same run.

Needs Debian's chromium and chromium-driver and the selenium package (dev extra).
Run: .venv/bin/python bench/bench_ui_partitions.py [--runs 1000] [--loads 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser tests' driver and web server fixture

from bench_configs import experiment_yaml, run_name  # noqa: E402

from ck_dagster.assets.instance import ensure_dagster_home  # noqa: E402
from ck_dagster_tests.fixtures.webserver import SERVE_TIMEOUT, WebServer  # noqa: E402
from ck_dagster_tests.ui.browser import Browser  # noqa: E402

BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE = "/assets/checkpoint?view=partitions"
#: the issue's target for N = 1000.
TARGET_S = 3.0

# Record every partition of checkpoint as materialized (argv: the partition keys' file).
MATERIALIZE_ALL = r"""
import sys
from dagster import AssetKey, AssetMaterialization, DagsterInstance
instance = DagsterInstance.get()
for key in open(sys.argv[1]).read().split():
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=AssetKey("checkpoint"), partition=key))
"""


def shows(text: str, label: str, count: int) -> bool:
    """Whether the page's ``text`` shows ``label (count)``, with or without a thousands comma."""
    return f"{label} ({count})" in text or f"{label} ({count:,})" in text


def page_loads(browser: Browser, loads: int, materialized: int, missing: int, first: str) -> list:
    """Seconds from navigation until the page shows its counts and the first partition,
    ``loads`` times, each from a blank page."""
    seconds = []
    for _ in range(loads):
        browser.driver.get("about:blank")
        start = time.perf_counter()
        browser.driver.get(browser.base_url + PAGE)
        browser.wait_for(
            lambda text: (
                shows(text, "Materialized", materialized)
                and shows(text, "Missing", missing)
                and first in text
            ),
            f"Materialized ({materialized}), Missing ({missing}) and {first}",
        )
        seconds.append(time.perf_counter() - start)
    return seconds


def bench(root: Path, count: int, loads: int) -> dict[str, list[float]]:
    """Load times (s) of the page for ``count`` registered runs: before and after training."""
    home = ensure_dagster_home(root / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    file = experiment_yaml(root, count)
    subprocess.run([str(BIN / "ck-dagster"), "register", str(file)], env=env, check=True)
    keys = [f"bench_sweep/{run_name(i, count)}" for i in range(count)]
    server = WebServer(home, root / "webserver.log")
    try:
        server.wait_until_serving(SERVE_TIMEOUT)
        browser = Browser(
            server.url, root / "screenshots", chromium=CHROMIUM, chromedriver=CHROMEDRIVER
        )
        try:
            before = page_loads(browser, loads + 1, 0, count, keys[0])
            (root / "keys.txt").write_text("\n".join(keys))
            subprocess.run(
                [sys.executable, "-c", MATERIALIZE_ALL, str(root / "keys.txt")], env=env, check=True
            )
            after = page_loads(browser, loads + 1, count, 0, keys[0])
        finally:
            browser.close()
    finally:
        server.stop()
    return {"before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--baseline-runs", type=int, default=10)
    parser.add_argument("--loads", type=int, default=5, help="timed loads after the cold one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "big").mkdir()
        (Path(tmp) / "small").mkdir()
        ours = bench(Path(tmp) / "big", args.runs, args.loads)
        small = bench(Path(tmp) / "small", args.baseline_runs, args.loads)
    figures = {}
    print(f"checkpoint's partitions page in headless Chromium, {args.loads} loads after a cold one")
    for state in ("before", "after"):
        cold, *warm = ours[state]
        median, baseline = statistics.median(warm), statistics.median(small[state][1:])
        figures |= {f"{state}_s": median, f"{state}_cold_s": cold, f"{state}_baseline_s": baseline}
        what = "every run missing (registered)" if state == "before" else "every run trained"
        print(
            f"  {args.runs} runs, {what:31} median {median:5.2f} s  (cold {cold:.2f} s; "
            f"all: {', '.join(f'{s:.2f}' for s in warm)})"
        )
        print(
            f"  {args.baseline_runs} runs, the same{'':22} median {baseline:5.2f} s  "
            f"-> {median / baseline:.1f}x the small experiment's time"
        )
    worst = max(figures["before_s"], figures["after_s"])
    print(f"  target for 1000 runs: <= {TARGET_S:.0f} s; slower state {worst:.2f} s")
    print(
        json.dumps(
            {
                "bench": "ui_partitions",
                "runs": args.runs,
                "baseline_runs": args.baseline_runs,
                **{k: round(v, 2) for k, v in figures.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
