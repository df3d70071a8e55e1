"""The results CSV opens safely in a spreadsheet: text that looks like a formula stays text."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from services.api.routes.results import ResultOut, to_csv


def result_view(**overrides: Any) -> ResultOut:
    fields: dict[str, Any] = {
        "id": 1,
        "job_id": "job-1",
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "device_id": "dev-1",
        "device_name": "cpu0",
        "device_class": "cpu",
        "vendor": "intel",
        "kind": "train",
        "model": "mlp",
        "dataset": "spiral",
        "batch_size": 32,
        "layers": [2, 16, 3],
        "steps": 40,
        "dtype": "float32",
        "spec_hash": "abc",
        "samples_per_s": -1.5,
        "samples_per_s_ci95_low": -2.0,
        "samples_per_s_ci95_high": 3.0,
        "trial_count": 3,
        "engine_time_s": 0.25,
        "metrics": {"energy": {"reason": "-no meter"}},
        "statistics": {},
    }
    fields.update(overrides)
    return ResultOut(**fields)


def only_row(text: str) -> dict[str, str]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 1
    return rows[0]


def test_text_cells_starting_with_a_formula_character_are_quoted_as_text() -> None:
    row = only_row(
        to_csv(
            [
                result_view(
                    device_name='=HYPERLINK("http://x","y")',
                    vendor="+1+2",
                    device_class="@SUM(A1)",
                    model="\tmlp",
                    dataset="\r=1",
                )
            ]
        )
    )
    assert row["device_name"] == '\'=HYPERLINK("http://x","y")'
    assert row["vendor"] == "'+1+2"
    assert row["device_class"] == "'@SUM(A1)"
    assert row["model"] == "'\tmlp"
    assert row["dataset"] == "'\r=1"
    assert row["energy_note"] == "'-no meter"


def test_numbers_stay_numbers_even_when_negative() -> None:
    row = only_row(to_csv([result_view()]))
    assert (row["samples_per_s"], row["samples_per_s_ci95_low"], row["samples_per_s_ci95_high"]) == (
        "-1.5",
        "-2.0",
        "3.0",
    )
    assert (row["device_name"], row["model"], row["trial_count"]) == ("cpu0", "mlp", "3")


def test_layers_are_written_as_the_textbook_writes_them_and_gemm_leaves_them_empty() -> None:
    train, gemm = list(
        csv.DictReader(
            io.StringIO(
                to_csv([result_view(), result_view(kind="gemm", model=None, layers=None, steps=None)]),
                newline="",
            )
        )
    )
    assert (train["layers"], train["steps"]) == ("2-16-3", "40")
    assert (gemm["layers"], gemm["steps"]) == ("", "")
