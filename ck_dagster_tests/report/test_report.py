"""The experiment report: intervals, the table, the varied parameters, CSV/PNG/Markdown."""

from __future__ import annotations

import csv
import io

import pytest

from ck_dagster.report.report import ScoreRow, build_report, varied_parameters, wilson_interval

pytestmark = pytest.mark.unit


def test_wilson_interval_matches_known_values() -> None:
    # 8 of 10: the textbook Wilson interval is (0.490, 0.943)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] > 0.1
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_varied_parameters_are_those_that_differ() -> None:
    runs = [{"lora_rank": 4, "lr": 1e-4}, {"lora_rank": 8, "lr": 1e-4}]
    assert varied_parameters(runs) == ["lora_rank"]
    assert varied_parameters([*runs, {"lora_rank": 8}]) == ["lora_rank", "lr"]


def rows() -> list[ScoreRow]:
    return [
        ScoreRow("base", "control", "base", "cap", "accuracy", 0.0, 20, {}),
        *(ScoreRow(f"rank{r}", "fine-tuned", f"epoch_{e}", "cap", "accuracy", s, 20,
                   {"lora_rank": r}, 0.5 - e / 10)
          for r, scores in ((4, (0.2, 0.5)), (8, (0.3, 0.7))) for e, s in enumerate(scores)),
    ]


def test_table_csv_markdown_and_plot(tmp_path) -> None:
    report = build_report("cap", rows())
    assert report.varied == ["lora_rank"]
    table = report.table()
    assert [r["run"] for r in table] == ["base", "rank4", "rank4", "rank8", "rank8"]
    assert table[-1]["score"] == 0.7 and table[-1]["ci95_low"] < 0.7 < table[-1]["ci95_high"]
    parsed = list(csv.DictReader(io.StringIO(report.csv())))
    assert parsed[1]["lora_rank"] == "4" and parsed[1]["epoch"] == "epoch_0"
    assert "| rank8 | fine-tuned | 8 | epoch_1 | cap | accuracy | 0.700 (" in report.markdown()
    paths = report.write(tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["csv"].read_text() == report.csv()
