"""The experiment report: intervals, McNemar's test, the tables, losses, CSV/PNG/Markdown."""

from __future__ import annotations

import base64
import csv
import io
import re

import pytest

from ck_dagster.report.report import (
    ScoreRow,
    build_report,
    compare,
    losses_by_epoch,
    mcnemar_exact,
    varied_parameters,
    wilson_interval,
)

pytestmark = pytest.mark.unit


def test_wilson_interval_matches_known_values() -> None:
    # 8 of 10: the textbook Wilson interval is (0.490, 0.943)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] > 0.1
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_matches_the_binomial_test() -> None:
    # scipy.stats.binomtest(1, 10, 0.5).pvalue == 0.021484375 (= 2 * 11 / 1024)
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert 0 < mcnemar_exact(200, 300) < 1e-5  # big counts stay exact integers


def test_varied_parameters_are_those_that_differ() -> None:
    runs = [{"lora_rank": 4, "lr": 1e-4}, {"lora_rank": 8, "lr": 1e-4}]
    assert varied_parameters(runs) == ["lora_rank"]
    assert varied_parameters([*runs, {"lora_rank": 8}]) == ["lora_rank", "lr"]


def test_losses_by_epoch_take_the_last_logged_loss_of_each_epoch() -> None:
    steps = [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 21)]
    steps.append({"step": 10, "val_loss": 2.5})
    assert losses_by_epoch(steps, 2) == {
        0: (pytest.approx(2.0), 2.5),
        1: (pytest.approx(1.0), None),
    }
    assert losses_by_epoch([], 2) == {} and losses_by_epoch(steps, 0) == {}


def samples(correct: int, total: int = 20) -> dict[str, float]:
    return {f"{i}#1": 1.0 if i < correct else 0.0 for i in range(total)}


def rows() -> list[ScoreRow]:
    return [
        ScoreRow("base", "control", "base", "cap", "match", 0.0, 20, {}, per_sample=samples(0)),
        *(
            ScoreRow(
                f"rank{r}",
                "fine-tuned",
                f"epoch_{e}",
                "cap",
                metric,
                s,
                20,
                {"lora_rank": r},
                0.5 - e / 10,
                None if e == 0 else 0.45,
                per_sample=samples(round(s * 20)),
            )
            for r, scores in ((4, (0.2, 0.5)), (8, (0.3, 0.7)))
            for e, s in enumerate(scores)
            for metric in ("match", "includes")
        ),
    ]


def test_paired_comparisons_against_the_control_and_the_best_run() -> None:
    report = build_report("cap", rows())
    found = {(c.run, c.role): c for c in report.comparisons()}
    assert set(found) == {("rank4", "control"), ("rank8", "control"), ("rank4", "best run")}
    versus_best = found["rank4", "best run"]
    # rank4's best epoch (10 right) against rank8's (14 right): 4 discordant samples
    assert (versus_best.label, versus_best.other, versus_best.other_label) == (
        "epoch_1",
        "rank8",
        "epoch_1",
    )
    assert (versus_best.only_run, versus_best.only_other) == (0, 4)
    assert versus_best.difference == pytest.approx(-0.2)
    assert versus_best.p_value == pytest.approx(mcnemar_exact(0, 4))
    assert found["rank8", "control"].p_value == pytest.approx(mcnemar_exact(14, 0))
    assert found["rank8", "control"].paired == 20


def test_a_comparison_without_common_or_binary_samples_says_so() -> None:
    first = ScoreRow("a", "fine-tuned", "epoch_0", "t", "m", 0.5, 2, per_sample={"1#1": 0.5})
    other = ScoreRow("b", "control", "base", "t", "m", 0.5, 2, per_sample={"2#1": 1.0})
    assert compare(first, other, "control").note == "no per-sample scores in common"
    partial = ScoreRow("b", "control", "base", "t", "m", 0.5, 2, per_sample={"1#1": 1.0})
    result = compare(first, partial, "control")
    assert result.p_value is None and "not 0/1" in result.note
    assert result.difference == pytest.approx(-0.5)


def test_table_csv_markdown_and_plot(tmp_path) -> None:
    report = build_report("cap", rows())
    assert report.varied == ["lora_rank"]
    table = report.table()
    assert [r["run"] for r in table][:3] == ["base", "rank4", "rank4"]
    assert table[-1]["score"] == 0.7 and table[-1]["ci95_low"] < 0.7 < table[-1]["ci95_high"]
    parsed = list(csv.DictReader(io.StringIO(report.csv())))
    assert parsed[1]["lora_rank"] == "4" and parsed[1]["epoch"] == "epoch_0"
    assert parsed[-1]["val_loss"] == "0.45" and parsed[1]["val_loss"] == ""

    png = report.plot_png()
    markdown = report.markdown(png)
    # one compact row per run: the primary metric (the first, match) only, best epoch last
    assert "| rank8 | 8 | 0.300 [0.15, 0.52] | 0.700 [0.48, 0.85] | epoch_1: 0.700 |" in markdown
    assert "| base (control) |  |  |  | base model: 0.000 |" in markdown
    assert "includes" not in markdown
    assert "| rank8 | 0.500 | 0.400 / 0.450 |" in markdown  # losses beside the scores
    assert "| rank4 epoch_1 | best run: rank8 epoch_1 | -0.200 | 0 | 4 | 0.125 | 20 |" in markdown
    image = re.search(r"!\[scores of cap\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert image and base64.b64decode(image.group(1)) == png

    paths = report.write(tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["csv"].read_text() == report.csv()
    assert "rank4,epoch_1,best run,rank8" in paths["comparisons"].read_text()
    assert "](scores.png)" in paths["markdown"].read_text()
    assert "base64" not in paths["markdown"].read_text()


def test_an_experiment_without_evaluations_says_so() -> None:
    assert "No evaluations yet." in build_report("cap", []).markdown()


def test_variables_are_the_columns_and_vis_labels_name_the_plotted_runs() -> None:
    from matplotlib import pyplot as plt

    report = build_report(
        "cap",
        rows(),
        variables=["lora_rank", "learning_rate"],
        labels={"rank4": "rank 4", "base": "untrained"},
    )
    assert report.varied == ["lora_rank", "learning_rate"]
    assert list(report.table()[0])[2:4] == ["lora_rank", "learning_rate"]
    figure = report.figure()
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    plt.close(figure)
    assert sorted(legend) == ["rank 4", "rank8", "untrained (base model)"]
