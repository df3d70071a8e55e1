"""Training-step throughput on a GPU: the engine on CuPy beside the engine on the CPU and PyTorch on the GPU.

Run on a host with CuPy and PyTorch (CUDA build); `scripts/device_check.sh` calls it:

    python benchmarks/bench_gpu.py --json "$OUT/bench_gpu.json"

Each configuration trains the same architecture in float32 with plain SGD on the same batches (a pool of 8
distinct batches already on the device, so no host-to-device copy is timed). Repetitions are interleaved and
medians reported. GPU time is read after a device synchronisation (CUDA events for the engine, `torch.cuda
.synchronize` for PyTorch). TF32 is off for both (CuPy's default; `torch.backends.cuda.matmul.allow_tf32`
is set False), so both do true float32 matrix products.

Targets (issue 6): engine on GPU >= 0.8x PyTorch on the GPU for the large MLP, and a GPU/CPU speedup above
the 5.1x DeZero reports for its MNIST MLP (`MLP((1000, 10))`, batch 100) on a Colab GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.backend import Device, Stopwatch, fingerprint, resolve_device, synchronize
from engine.networks import mlp, two_layer_net
from engine.optimizers import SGD

CONFIGS: dict[str, tuple[list[int], int]] = {
    "textbook": ([784, 50, 10], 100),
    "dezero_mlp": ([784, 1000, 10], 100),
    "large": ([784, 1024, 1024, 10], 1024),
}
LR = 0.01
POOL = 8

Runner = Callable[[int], float]  # runs n steps, returns elapsed seconds of device work


def engine_runner(widths: list[int], batch: int, device: Device) -> Runner:
    """The engine's training step on `device`, timed with its own Stopwatch (CUDA events on a GPU)."""
    net = two_layer_net(device=device) if widths == [784, 50, 10] else mlp(widths, init="he", device=device)
    rng = np.random.default_rng(0)
    xp = device.xp
    xs = [xp.asarray(rng.random((batch, widths[0]), dtype=np.float32)) for _ in range(POOL)]
    ts = [xp.asarray(rng.integers(0, widths[-1], batch)) for _ in range(POOL)]
    opt = SGD(LR)

    def run(steps: int) -> float:
        synchronize(device)
        watch = Stopwatch(device).start()
        for i in range(steps):
            net.train_step(xs[i % POOL], ts[i % POOL], opt)
        return watch.stop()

    return run


def torch_runner(widths: list[int], batch: int) -> Runner:
    """PyTorch on the GPU: nn.Sequential + optim.SGD + CrossEntropyLoss, float32, TF32 off."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    layers: list[Any] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.rand((batch, widths[0]), generator=gen).to(device) for _ in range(POOL)]
    ts = [torch.randint(0, widths[-1], (batch,), generator=gen).to(device) for _ in range(POOL)]

    def run(steps: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xs[i % POOL]), ts[i % POOL]).backward()
            opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def calibrate(run: Runner, seconds: float) -> int:
    """Steps that take about `seconds` (after a warm-up that also triggers lazy allocation/compilation)."""
    run(20)
    steps = 10
    while True:
        elapsed = run(steps)
        if elapsed >= seconds / 4 or steps >= 1_000_000:
            return max(10, int(steps * seconds / max(elapsed, 1e-9)))
        steps *= 4


def measure(name: str, repeats: int, seconds: float, with_torch: bool) -> dict[str, Any]:
    widths, batch = CONFIGS[name]
    runners: dict[str, Runner] = {
        "engine_gpu": engine_runner(widths, batch, resolve_device("gpu")),
        "engine_cpu": engine_runner(widths, batch, resolve_device("cpu")),
    }
    if with_torch:
        runners["torch_gpu"] = torch_runner(widths, batch)
    steps = {key: calibrate(run, seconds) for key, run in runners.items()}
    samples: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(repeats):
        for key, run in runners.items():  # interleaved: noise hits every contestant alike
            samples[key].append(batch * steps[key] / run(steps[key]))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    result: dict[str, Any] = {
        "widths": widths,
        "batch_size": batch,
        "samples_per_s": {key: {"median": medians[key], "trials": samples[key]} for key in runners},
        "gpu_over_cpu": medians["engine_gpu"] / medians["engine_cpu"],
    }
    if with_torch:
        result["engine_gpu_over_torch_gpu"] = medians["engine_gpu"] / medians["torch_gpu"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="target length of one repetition")
    parser.add_argument(
        "--no-torch", action="store_true", help="skip PyTorch (e.g. where it is not installed)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "fingerprint_gpu": fingerprint(resolve_device("gpu")),
        "fingerprint_cpu": fingerprint(resolve_device("cpu")),
        "configs": {},
    }
    if not args.no_torch:
        import torch

        report["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda}
    for name in args.configs.split(","):
        report["configs"][name] = result = measure(name, args.repeats, args.seconds, not args.no_torch)
        line = f"{name:11s} batch {result['batch_size']:5d}  " + "  ".join(
            f"{key} {value['median']:12.0f}/s" for key, value in result["samples_per_s"].items()
        )
        line += f"  gpu/cpu {result['gpu_over_cpu']:.2f}x"
        if "engine_gpu_over_torch_gpu" in result:
            line += f"  engine/torch {result['engine_gpu_over_torch_gpu']:.2f}x"
        print(line, flush=True)
    targets = {}
    if "large" in report["configs"] and not args.no_torch:
        ratio = report["configs"]["large"]["engine_gpu_over_torch_gpu"]
        targets["large_engine_over_torch_gpu>=0.8"] = {"value": ratio, "met": ratio >= 0.8}
    if "dezero_mlp" in report["configs"]:
        speedup = report["configs"]["dezero_mlp"]["gpu_over_cpu"]
        targets["dezero_mlp_gpu_over_cpu>5.1"] = {"value": speedup, "met": speedup > 5.1}
    report["targets"] = targets
    for key, value in targets.items():
        print(f"target {key}: {value['value']:.2f} {'met' if value['met'] else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
