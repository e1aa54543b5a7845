"""The Dagster UI in a real headless Chromium: an experiment registered and its configs
materialized with the real CLIs, then checked page by page as a researcher would see it.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (dev extra); without
them the tests are skipped, except on CI (`CI=true`), where that is a failure.
Full-page screenshots of every page checked go to `test-artifacts/ui/`.
"""

from __future__ import annotations

import functools
import importlib.util
import operator
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
import yaml

from ck_dagster.assets.instance import ensure_dagster_home
from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.schema import Experiment
from ck_dagster_tests.fixtures.dagster import EXAMPLES, REPO, run_command
from ck_dagster_tests.fixtures.webserver import SERVE_TIMEOUT, WebServer

if TYPE_CHECKING:
    from ck_dagster_tests.ui.browser import Browser

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts" / "ui"
EXAMPLE = "cap_rank_sweep.yaml"
RUN = "rank16_lr3e-4"  # sets a parameter of its own (lr) besides the LoRA rank


@pytest.fixture(scope="module", autouse=True)
def require_browser() -> None:
    """Skip the module, before anything slow starts, when a browser part is missing; on CI
    that is a failure, so the browser tests cannot silently stop running there."""
    missing = [
        part
        for part, present in (
            (
                "the selenium package (pip install -e '.[dev]')",
                importlib.util.find_spec("selenium") is not None,
            ),
            (f"{CHROMIUM} (apt-get install chromium)", CHROMIUM.exists()),
            (f"{CHROMEDRIVER} (apt-get install chromium-driver)", CHROMEDRIVER.exists()),
        )
        if not present
    ]
    if not missing:
        return
    reason = "browser tests need " + ", ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Served:
    """The web server's address and the experiment it shows."""

    url: str
    experiment: Experiment


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A fresh Dagster home with the example experiment registered and its configs
    materialized by the real CLIs, shown by dagster-webserver. The server starts once the
    instance exists, so that its start-up overlaps the materialization (the UI reads the
    instance live)."""
    root = tmp_path_factory.mktemp("ui")
    # ck_dagster's instance settings switch off the community dialog that would cover pages
    home = ensure_dagster_home(root / "dagster_home")
    file = Path(shutil.copytree(EXAMPLES, root / "examples")) / EXAMPLE  # runs go beside it
    env = {"DAGSTER_HOME": str(home)}
    # registering first creates the instance's SQLite databases: two processes creating them
    # at once can leave two alembic heads ("more than one head present")
    run_command(["ck-dagster", "register", file], env=env)
    server = WebServer(home, root / "webserver.log")
    try:
        experiment = load_experiment(file)
        keys = [experiment.partition_key(run) for run in experiment.runs]
        run_command(
            [
                "dagster",
                "asset",
                "materialize",
                "-m",
                "ck_dagster",
                "--select",
                "recipe_config,run_config",
                "--partition-range",
                f"{keys[0]}...{keys[-1]}",
            ],
            env=env,
        )
        server.wait_until_serving(SERVE_TIMEOUT)
        yield Served(server.url, experiment)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    """One headless Chromium session for the module's pages."""
    from ck_dagster_tests.ui.browser import Browser  # needs selenium: known present by now

    session = Browser(served.url, ARTIFACTS, chromium=CHROMIUM, chromedriver=CHROMEDRIVER)
    try:
        yield session
    finally:
        session.close()


def asset_page(asset: str, **params: str) -> str:
    """The URL path of an asset's page in the Dagster 1.13 UI, e.g. one of its tabs."""
    return f"/assets/{asset}?{urlencode(params)}"


def test_lineage_shows_run_config_and_what_it_is_made_from(browser: Browser) -> None:
    """run_config's upstream lineage graph: run_spec and recipe_config feed it, and both
    config assets show every partition filled."""
    with browser.page(
        asset_page("run_config", view="lineage", lineageScope="upstream"),
        screenshot="run_config-lineage",
    ):
        # "run_config" is in the page title anyway; the other names are graph nodes only
        browser.wait_for_text("run_spec", "recipe_config")
        browser.wait_for(
            lambda shown: shown.count("100% filled") == 2,
            "recipe_config and run_config 100% filled",
        )


def test_every_run_config_partition_shows_materialized(browser: Browser, served: Served) -> None:
    """The partitions tab counts the experiment's runs as materialized and lists them."""
    keys = [served.experiment.partition_key(run) for run in served.experiment.runs]
    with browser.page(
        asset_page("run_config", view="partitions"), screenshot="run_config-partitions"
    ):
        browser.wait_for_text(f"Materialized ({len(keys)})", "Missing (0)", "Failed (0)", *keys)


def partition_page(served: Served) -> str:
    """The URL path of the run's run_config partition: its status and latest metadata."""
    return asset_page(
        "run_config", view="partitions", partition=served.experiment.partition_key(RUN)
    )


def test_a_run_config_partition_shows_its_values_and_files(
    browser: Browser, served: Served
) -> None:
    """A partition's materialization metadata: the values table shows every value as it is
    on disk, each with its source (recipe, controls, run or derived), and the files' paths."""
    run_dir = served.experiment.run_dir(RUN)
    finetune_yaml = run_dir / "finetune.yaml"
    with browser.page(partition_page(served), screenshot=f"run_config-{RUN}"):
        browser.wait_for_text(str(finetune_yaml))
        assert browser.metadata_value("finetune_yaml").text == str(finetune_yaml)
        assert browser.metadata_value("finetune_slurm").text == str(run_dir / "finetune.slurm")

        header, *rows = browser.table_rows(browser.metadata_value("values"))
        assert header == ["path", "value", "source", "origin"]
        shown = {path: (value, source) for path, value, source, _ in rows}
        config = yaml.safe_load(finetune_yaml.read_text())
        assert {path: value for path, (value, _) in shown.items()} == {
            path: str(lookup(config, path)).strip() for path in shown
        }
        assert {source for _, source in shown.values()} == {"recipe", "controls", "run", "derived"}
        assert {path: shown[path] for path in SOURCES} == SOURCES


def test_a_run_config_partition_shows_its_slurm_script(browser: Browser, served: Served) -> None:
    """The partition's slurm_script metadata is the finetune.slurm written for the run."""
    script = served.experiment.run_dir(RUN) / "finetune.slurm"
    with browser.page(partition_page(served), screenshot=f"run_config-{RUN}-slurm_script"):
        browser.wait_for_text("slurm_script")
        assert browser.metadata_code_block("slurm_script") == script.read_text().strip()


# what the values table must say for the run's own parameters and a few others (the
# example's controls set epochs 2 and batch size 4; lora_alpha is derived as 2 x rank)
SOURCES = {
    "model.lora_rank": ("16", "run"),
    "optimizer.lr": ("0.0003", "run"),
    "epochs": ("2", "controls"),
    "batch_size": ("4", "controls"),
    "model.lora_alpha": ("32", "derived"),
    "model.lora_dropout": ("0.0", "recipe"),
}


def lookup(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a nested config."""
    return functools.reduce(operator.getitem, path.split("."), config)
