"""The pages people read, in a real headless Chromium, through ``ck-dagster ui``: a run's
checkpoint (job, epochs, loss curve, training progress), its evaluation scores, the
experiment's report with its plot, and the refusal without the token.

A tiny experiment (a LoRA run and a control) is trained and evaluated for real with the local
launcher first. Screenshots of every page go to ``test-artifacts/ui/`` (their paths are
printed). Skipped without Chromium, except on CI (see ``test_browser.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ck_dagster.assets.instance import ensure_dagster_home
from ck_dagster_tests.fixtures.dagster import run_command
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment
from ck_dagster_tests.fixtures.webserver import SERVE_TIMEOUT, WebServer
from ck_dagster_tests.ui.test_browser import (  # noqa: F401 (the module's skip/fail fixture)
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    asset_page,
    require_browser,
)

if TYPE_CHECKING:
    from ck_dagster_tests.ui.browser import Browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNS = """
  - {name: lora8, type: fine-tuned, model: tiny-llama, parameters: {lora_rank: 8}}
  - {name: base, type: control, model: tiny-llama}
"""
#: the last epoch of the LoRA run and the base model: two evaluations, not three.
#: test words evaluated (of 100): enough for the tables, the plot and a paired test.
TEST_WORDS = 20
MATRIX = """  matrix:
    - {run: lora8, epochs: [1]}
"""


@pytest.fixture(scope="module")
def ui(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, capitalization_data: Path
) -> Iterator[WebServer]:
    """``ck-dagster ui`` on an instance where the tiny experiment was trained, evaluated (on
    20 test words) and reported by the real CLIs. The UI starts once registering has created
    the instance's storage, and reads the instance live while the rest runs."""
    root = tmp_path_factory.mktemp("pages")
    home = ensure_dagster_home(root / "dagster_home")
    data = json.loads(capitalization_data.read_text())
    (root / "words.json").write_text(json.dumps({**data, "test": data["test"][:TEST_WORDS]}))
    file = write_tiny_experiment(
        root, tiny_model_dir, root / "words.json", runs=RUNS, evaluation=MATRIX
    )
    env = {
        "DAGSTER_HOME": str(home),
        "CK_LAUNCHER": "local",
        "CK_LOCAL_JOBS_DIR": str(root / "jobs"),
    }
    run_command(["ck-dagster", "register", file], env=env)
    server = WebServer(home, root / "ui.log", token=True)
    try:
        for selection in (
            [
                "recipe_config,run_config,checkpoint,eval_log",
                "--partition-range",
                "tiny/lora8...tiny/base",
            ],
            ["experiment_report", "--partition", "tiny"],
        ):
            run_command(
                ["dagster", "asset", "materialize", "-m", "ck_dagster", "--select", *selection],
                env=env,
                timeout=900,
            )
        server.wait_until_serving(SERVE_TIMEOUT)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(ui: WebServer) -> Iterator[Browser]:
    """A Chromium session that opened the URL ``ck-dagster ui`` prints (token -> cookie)."""
    from ck_dagster_tests.ui.browser import Browser

    session = Browser(ui.url, ARTIFACTS, chromium=CHROMIUM, chromedriver=CHROMEDRIVER)
    try:
        with session.page(f"/?token={ui.token}", screenshot="token-accepted"):
            session.wait_for_text("Overview")
        yield session
    finally:
        print("screenshots:", *sorted(ARTIFACTS.glob("*.png")), sep="\n  ")
        session.close()


def test_the_checkpoint_page_shows_job_epochs_loss_and_progress(browser: Browser) -> None:
    """The partition's job, epochs and loss curve; its events, the progress seen while the
    job trained (an observation)."""
    with browser.page(
        asset_page("checkpoint", view="events", partition="tiny/lora8"),
        screenshot="checkpoint-tiny-lora8-events",
    ):
        browser.click_last("tiny/lora8")  # the oldest event: an observation while it trained
        browser.wait_for_text("progress", "updated")
        assert browser.metadata_value("progress").text.startswith("epoch ")
        assert float(browser.metadata_value("loss").text) > 0
    with browser.page(
        asset_page("checkpoint", view="partitions", partition="tiny/lora8"),
        screenshot="checkpoint-tiny-lora8",
    ):
        browser.wait_for_text("epochs_saved", "loss_curve", "job_id")
        assert browser.metadata_value("epochs_saved").text == "2"
        assert browser.metadata_value("state").text == "COMPLETED"
        header, *rows = browser.table_rows(browser.metadata_value("loss_curve"))
        assert header == ["step", "loss"] and len(rows) >= 5
        epochs = browser.table_rows(browser.metadata_value("epochs"))
        assert [row[0] for row in epochs[1:]] == ["0", "1"]


def test_the_eval_page_shows_scores(browser: Browser) -> None:
    with browser.page(
        asset_page("eval_log", view="partitions", partition="tiny/lora8"),
        screenshot="eval_log-tiny-lora8",
    ):
        browser.wait_for_text("scores", "errored_samples")
        header, *rows = browser.table_rows(browser.metadata_value("scores"))
        assert header[:4] == ["task", "target", "scorer", "accuracy"]
        assert {(row[1], row[2]) for row in rows} == {("epoch_1", "match"), ("epoch_1", "includes")}
        assert all(0.0 <= float(row[3]) <= 1.0 for row in rows)


def test_the_report_shows_its_tables_and_plot(browser: Browser) -> None:
    with browser.page(
        asset_page("experiment_report", view="partitions", partition="tiny"),
        screenshot="experiment_report-tiny",
    ):
        browser.wait_for_text("report", "runs_evaluated")
        report = browser.metadata_markdown("report")
        browser.wait_for_text("Paired on the same samples", "lora8 epoch_1")
        assert "base (control)" in report.text and "control: base" in report.text
        # the plot is an image the browser decoded, not a file path
        assert browser.image_width(report, "img[src^='data:image/png;base64,']") > 300
        browser.save_screenshot("experiment_report-tiny-markdown")


def test_without_the_token_the_browser_gets_nothing(browser: Browser, ui: WebServer) -> None:
    browser.driver.delete_all_cookies()
    with browser.page(asset_page("checkpoint"), screenshot="token-refused"):
        browser.wait_for_text("401: a token is needed")
        assert "Dagster" not in browser.driver.page_source
    with browser.page("/?token=not-the-token", screenshot="token-wrong"):
        browser.wait_for_text("403: the token is wrong")
