"""The peak memory of a real job: run it in a fresh interpreter and read that process's own high-water mark.

    python -m harness.memory_peak < spec.json     # prints {"baseline_bytes": ..., "peak_bytes": ...}

`measure_peak(spec)` starts `python -m harness.memory_peak` (this checkout first on the path), hands it the
spec on stdin, and reads back two figures of the child itself from `/proc/self/status`:

- `baseline_bytes`: `VmHWM` once the engine is imported (the interpreter, NumPy and the engine's code);
- `peak_bytes`: `VmHWM` after `engine.jobs.run_job(spec)` returned: the peak resident set of the job's
  whole life, baseline included. That is what a job kind's `estimate_memory` bounds.

`VmHWM` and not `ru_maxrss`: a child started with vfork + exec (as `subprocess` does) inherits its parent's
`ru_maxrss` as a floor, so a fat parent (pytest) would set every figure; `VmHWM` belongs to the child's own
address space. The module imports only the standard library before the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.processes import PROJECT_ROOT, with_project_on_path


@dataclass(frozen=True)
class PeakMemory:
    """What one job's process held: after importing the engine, and at its peak."""

    baseline_bytes: int
    peak_bytes: int


def high_water_mark_bytes() -> int:
    """This process's peak resident set (`VmHWM` of /proc/self/status), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def measure_peak(spec: dict[str, Any], timeout_s: float = 120.0) -> PeakMemory:
    """Run `spec` in a fresh interpreter and return its baseline and peak; RuntimeError if the job failed."""
    done = subprocess.run(
        [sys.executable, "-m", "harness.memory_peak"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=with_project_on_path(dict(os.environ)),
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the job failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return PeakMemory(int(figures["baseline_bytes"]), int(figures["peak_bytes"]))


# Short timing settings: the grid measures memory, not speed.
GRID_TIMING = {"warmup": 1, "window": 4, "min_repeats": 2, "max_repeats": 2, "target_cv": 1.0}
IDX_TRAIN, IDX_TEST = 8_000, 2_000  # the IDX set `write_idx_set` writes: 7.6 MiB of files, 60 MiB in float64


def _train(model: dict[str, Any], dataset: str, dtype: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "train",
        "model": model,
        "dataset": dataset,
        "dtype": dtype,
        "steps": 8,
        "batch_size": 100,
        "timing": GRID_TIMING,
        **fields,
    }


def memory_grid(idx_dir: Path) -> dict[str, dict[str, Any]]:
    """Jobs whose peaks the estimates must bound: every kind, model and data set and both dtypes (not
    every combination), sized so the data or the activations (tens to hundreds of MiB) stand well above
    the 34 MiB baseline, each a few seconds. `idx_dir` holds the files `write_idx_set` wrote (`mnist`)."""
    idx = str(idx_dir)
    mlp = {"name": "mlp", "layers": [784, 100, 10]}
    convnet = {"name": "simple_convnet"}
    wide = {
        "name": "mlp",
        "layers": [256, 1024, 1024, 10],
        "activation": "sigmoid",
        "batchnorm": True,
        "dropout": 0.3,
    }
    adam = {"name": "adam", "lr": 0.001, "weight_decay": 1e-4}
    gemm = {"kind": "gemm", "timing": GRID_TIMING}
    bvn = {"kind": "backprop_vs_numerical", "timing": GRID_TIMING}
    return {
        "train mlp spiral float32": _train({**mlp, "layers": [2, 64, 3]}, "spiral", "float32",
                                           synthetic_samples=3_000_000),
        "train mlp spiral float64": _train({**mlp, "layers": [2, 64, 3]}, "spiral", "float64",
                                           synthetic_samples=2_000_000),
        "train mlp synthetic float32": _train({**mlp, "layers": [1024, 100, 10]}, "synthetic", "float32",
                                              synthetic_samples=16_000),
        "train mlp+bn+dropout+adam synthetic float64": _train(wide, "synthetic", "float64", steps=4,
                                                              synthetic_samples=20_000, batch_size=1000,
                                                              eval_samples=1500, optimizer=adam),
        "train two_layer_net mnist5k float32": _train({"name": "two_layer_net"}, "mnist5k", "float32"),
        "train mlp tanh+momentum mnist5k float64": _train(
            {**mlp, "layers": [784, 512, 10], "activation": "tanh"}, "mnist5k", "float64",
            optimizer={"name": "momentum", "lr": 0.01}),
        "train mlp idx float64": _train(mlp, "mnist", "float64", dataset_path=idx),
        "train mlp digits float64": _train({**mlp, "layers": [64, 100, 10]}, "digits", "float64"),
        "train simple_convnet mnist5k float32": _train(convnet, "mnist5k", "float32", batch_size=50,
                                                       eval_samples=1000),
        "train simple_convnet synthetic float64": _train(convnet, "synthetic", "float64", batch_size=50,
                                                         synthetic_samples=2_500),
        "train simple_convnet idx float32": _train(convnet, "mnist", "float32", dataset_path=idx,
                                                   batch_size=50, eval_samples=1000),
        "gradcheck mlp float32": {"kind": "gradcheck", "model": {**mlp, "layers": [32, 16, 10]},
                                  "dtype": "float32"},
        "gradcheck two_layer_net float64": {"kind": "gradcheck", "model": {"name": "two_layer_net"},
                                            "dtype": "float64"},
        "backprop_vs_numerical float32": {**bvn, "bvn_widths": [8, 32], "dtype": "float32"},
        "backprop_vs_numerical float64": {**bvn, "bvn_widths": [32], "dtype": "float64"},
        "gemm float32": {**gemm, "gemm_sizes": [256, 1536], "dtype": "float32"},
        "gemm float64": {**gemm, "gemm_sizes": [1280], "dtype": "float64"},
        "parity float32": {"kind": "parity", "dtype": "float32"},
        "parity float64": {"kind": "parity", "dtype": "float64"},
    }  # fmt: skip


def write_idx_set(directory: Path, train: int = IDX_TRAIN, test: int = IDX_TEST) -> Path:
    """The four MNIST IDX files (random 28x28 images, labels 0-9) of `train` + `test` samples."""
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (directory / name).write_bytes(header + array.tobytes())
    return directory


def main() -> None:
    spec = json.load(sys.stdin)
    from engine.jobs import run_job

    baseline = high_water_mark_bytes()
    run_job(spec)
    print(json.dumps({"baseline_bytes": baseline, "peak_bytes": high_water_mark_bytes()}))


if __name__ == "__main__":
    main()
