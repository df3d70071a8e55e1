"""`bpbench run` / `bpbench gradcheck`: options and spec files to JobSpec, one-line errors, clean --json."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import engine.jobs
from cli import app
from cli.spec_options import SpecError, spec_from_options
from engine.jobs import DEFAULT_SPEC
from services.jobs.spec import JobSpec

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--warmup", "1", "--window", "5", "--min-repeats", "3", "--max-repeats", "5"]
runner = CliRunner()


def test_the_textbook_recipe_reaches_090_test_accuracy_on_mnist5k() -> None:
    """The issue's acceptance command, through the real console entry point in a subprocess."""
    command = (
        "run --kind train --model two_layer_net --dataset mnist5k --steps 10000 --batch-size 100 --lr 0.1"
    )
    entry = "import sys; sys.argv[0] = 'bpbench'; from cli import main; main()"
    # One BLAS thread: on a shared machine a second thread mostly waits, and the result does not depend on it.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", entry, *command.split(), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds the document and nothing else
    assert result["metrics"]["test_accuracy"] >= 0.90
    assert result["metrics"]["steps"] == 10000 and result["metrics"]["loss_curve"][-1][0] == 10000


def test_json_output_is_the_result_document() -> None:
    result = runner.invoke(app, ["run", "--steps", "20", "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["kind"] == "train" and document["spec"]["steps"] == 20
    assert set(document["metrics"]["samples_per_s"]) >= {"median", "iqr", "ci95"}


def test_without_json_a_summary_table_is_printed() -> None:
    result = runner.invoke(app, ["run", "--steps", "20", *FAST])
    assert result.exit_code == 0, result.stderr
    assert "samples/s" in result.stdout and "test accuracy" in result.stdout


def test_options_override_the_spec_file(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"kind": "train", "steps": 500, "seed": 3, "optimizer": {"name": "sgd", "lr": 0.05}})
    )
    result = runner.invoke(app, ["run", str(spec_file), "--steps", "15", "--json", *FAST])
    assert result.exit_code == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert spec["steps"] == 15 and spec["seed"] == 3 and spec["optimizer"]["lr"] == 0.05


def test_gradcheck_is_run_kind_gradcheck_in_float64() -> None:
    result = runner.invoke(
        app, ["gradcheck", "--model", "mlp", "--layers", "12,8,4", "--activation", "tanh", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["kind"] == "gradcheck" and document["spec"]["dtype"] == "float64"
    assert document["metrics"]["max_relative_error"] <= 1e-7
    assert set(document["metrics"]["parameters"]) == {"W1", "b1", "W2", "b2"}


def test_seeded_runs_give_the_same_losses() -> None:
    runs = [runner.invoke(app, ["run", "--steps", "30", "--seed", "11", "--json", *FAST]) for _ in range(2)]
    curves = [json.loads(r.stdout)["metrics"]["loss_curve"] for r in runs]
    assert curves[0] == curves[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lr", "0"], "error: --lr 0.0: Input should be greater than 0"),
        (["--kind", "sing"], "error: --kind \"sing\": Input should be 'train', 'gradcheck'"),
        (["--steps", "abc"], "error: Invalid value for '--steps'"),
        (["--steps=abc"], "error: Invalid value for '--steps'"),
        (["--stepz", "5"], "error: No such option: --stepz"),
        (["--layers", "784,a,10"], "error: --layers '784,a,10': expected comma-separated integers"),
        (["--batch-size", "0"], "error: --batch-size 0: Input should be greater than or equal to 1"),
        (["--dataset", "mnist"], "error: dataset_path is required for dataset=mnist"),
        (
            ["--dataset", "mnist", "--dataset-path", "/nonexistent"],
            "error: mnist: /nonexistent is not a directory",
        ),
        (["nowhere.json"], "error: spec file nowhere.json: no such file"),
        (
            ["--device", "xla:tpu:0", "--dtype", "float64"],
            "error: --dtype \"float64\": float64 cannot run on device 'xla:tpu:0' (xla has no float64 on "
            "tpu); accepted: float32 on it, or float64 on a device that has it (e.g. cpu)",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_code_2(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    if "Invalid value" in expected:
        assert result.stderr.rstrip().endswith("(got 'abc')")  # the refused value is quoted


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="this machine has CuPy")
def test_asking_for_a_gpu_without_cupy_is_one_line() -> None:
    result = runner.invoke(app, ["run", "--device", "gpu"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "CuPy is not installed" in result.stderr


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ('{"kind": "train",', "invalid JSON at line 1"),
        ("[1, 2]", "expected a JSON object of job fields, got list"),
        ('{"kind": "train", "stepz": 3}', "stepz: unknown field; accepted: kind, device, model"),
        ('{"optimizer": {"lr": -1}}', "optimizer.lr -1: Input should be greater than 0"),
    ],
)
def test_a_bad_spec_file_is_one_line_naming_the_field(tmp_path: Path, document: str, expected: str) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(document)
    result = runner.invoke(app, ["run", str(spec_file)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert expected in result.stderr


def test_a_diverging_run_says_where_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def diverge(*args: object, **kwargs: object) -> None:
        raise engine.jobs.JobDiverged(3, float("nan"))

    monkeypatch.setattr(engine.jobs, "run_job", diverge)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: diverged at step 3 (loss became NaN or infinite")


def test_spec_from_options_layers_file_presets_options_and_forced(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"dtype": "float32", "steps": 7}))
    spec = spec_from_options(
        spec_file,
        {"lr": 0.2, "layers": "784,20,10"},
        presets={"dtype": "float64"},
        forced={"kind": "gradcheck"},
    )
    assert spec.kind == "gradcheck" and spec.dtype == "float64" and spec.steps == 7
    assert spec.optimizer.lr == 0.2 and spec.model.layers == [784, 20, 10]


def test_spec_from_options_refuses_an_option_that_contradicts_the_command() -> None:
    with pytest.raises(SpecError, match="--kind 'train': this command only runs 'gradcheck'"):
        spec_from_options(None, {"kind": "train"}, forced={"kind": "gradcheck"})


def test_engine_defaults_match_the_job_spec_defaults() -> None:
    assert JobSpec.model_validate({}).engine_dict() == DEFAULT_SPEC
