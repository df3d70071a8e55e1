"""What scripts/device_check.sh asks of the host's Python: which accelerators it can reach, and the verdicts.

Subcommands (each prints lines the script reads or shows; a probe never fails the check itself):

- `gpu`: one line `<stack> <device> <what>`: `cuda gpu:0 ...` for CuPy's CUDA build, `rocm rocm:0 ...` for
  its ROCm build (the spelling that names the stack; `gpu:0` would be the same GPU), or `none - <why>`
  when CuPy is missing or sees no GPU.
- `xla [platform ...]`: one line `<platform> xla:<platform>:0 ...` for the first of the platforms (default
  `tpu`, then `gpu`) JAX has, or `none - <why>` when JAX is not importable or has none of them.
- `environment <stack>`: the environment file's lines for a GPU stack: CuPy and the runtime; on ROCm the
  HIP version, the GPU's name and whether amdsmi is there (NVML and nvidia-smi are CUDA's).
- `parity <file> <device>`: one summary line of a `bpbench run --kind parity --json` document; exit 1 when
  a preset is beyond its bound or the document is missing.
- `train <file> <device>`: one summary line of a `bpbench run --kind train --json` document.

Imports stay inside the functions: a probe with CuPy or JAX missing must still answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# JAX's accelerator platforms, in the order the check prefers them (a TPU VM has no GPU platform).
XLA_PLATFORMS = ("tpu", "gpu")


def one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one line (a reason the script prints after a word)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def probe_gpu() -> str:
    """`<stack> <device> <what>` for the GPU CuPy has, or `none - <why>`."""
    try:
        import cupy
    except Exception as exc:  # an ImportError, or a CuPy whose CUDA/HIP libraries fail to load
        return f"none - CuPy is not importable ({one_line(exc)})"
    from engine.backends.cupy_common import BUILD_NAMES, build_backend_name, gpu_name

    stack = build_backend_name(cupy)
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return f"none - CuPy {cupy.__version__} ({BUILD_NAMES[stack]} build) sees no GPU ({one_line(exc)})"
    if count == 0:
        return f"none - CuPy {cupy.__version__} ({BUILD_NAMES[stack]} build) sees no GPU"
    device = "rocm:0" if stack == "rocm" else "gpu:0"
    what = f"{gpu_name(cupy, 0)}, {count} GPU(s), CuPy {cupy.__version__} ({BUILD_NAMES[stack]} build)"
    return f"{stack} {device} {what}"


def probe_xla(platforms: list[str]) -> str:
    """`<platform> xla:<platform>:0 <what>` for the first of the platforms JAX has, or `none - <why>`."""
    try:
        import jax
    except Exception as exc:
        return f"none - JAX is not importable ({one_line(exc)})"
    for platform in platforms:
        try:
            devices = jax.devices(platform)
        except Exception:  # RuntimeError: no backend of that platform on this host
            continue
        if devices:
            return f"{platform} xla:{platform}:0 {devices[0].device_kind}, JAX {jax.__version__}"
    try:
        found = sorted({device.platform for device in jax.devices()})
    except Exception as exc:
        found = [one_line(exc)]
    wanted = " or ".join(platform.upper() for platform in platforms)
    return f"none - JAX {jax.__version__} has no {wanted} platform (it has: {', '.join(found)})"


def environment(stack: str) -> list[str]:
    """The environment file's lines for the GPU stack (`cuda`, `rocm`); the caller adds nvidia-smi's."""
    import cupy
    import numpy

    from engine.backends.cupy_common import gpu_name

    runtime = cupy.cuda.runtime
    version = int(runtime.runtimeGetVersion())
    lines = [f"cupy {cupy.__version__} numpy {numpy.__version__}"]
    if stack != "rocm":
        from engine.backend import cuda_driver_version, driver_release

        lines.append(f"cuda runtime {version}")
        lines.append(f"driver {driver_release()} cuda driver {cuda_driver_version()}")
        return lines
    # HIP encodes its version as major * 10**7 + minor * 10**5 + patch.
    hip = f"{version // 10**7}.{version // 10**5 % 100}.{version % 10**5}"
    lines.append(f"rocm: HIP {hip} ({version}), GPU 0 {gpu_name(cupy, 0)}")
    try:
        import amdsmi  # noqa: F401  (present or not is the fact: telemetry reads it)

        lines.append("amdsmi: present (GPU energy, power and clocks)")
    except Exception as exc:
        lines.append(f"amdsmi: absent ({one_line(exc)}): no GPU energy or clocks in the results")
    return lines


def parity_summary(path: Path, device: str) -> tuple[str, bool]:
    """One line for a parity result document, and whether every preset kept within its bound."""
    try:
        result: dict[str, Any] = json.loads(path.read_text())
        metrics, presets = result["metrics"], result["metrics"]["presets"]
        stack = result["fingerprint"]["backend"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"parity on {device}: no result document in {path.name} ({one_line(exc)})", False
    failed = [name for name, preset in presets.items() if not preset["passed"]]
    within = len(presets) - len(failed)
    verdict = "passed" if presets and not failed else f"FAILED ({', '.join(failed) or 'no preset'})"
    line = (
        f"parity {metrics['dtype']} on {device} ({stack}): {within}/{len(presets)} presets within "
        f"{metrics['bound']:.0e}, worst relative error {metrics['max_relative_error']:.2e}: {verdict}"
    )
    return line, verdict == "passed"


def train_summary(path: Path, device: str) -> str:
    """One line for a training result document: samples/s and the test accuracy it reached."""
    try:
        metrics: dict[str, Any] = json.loads(path.read_text())["metrics"]
        rate, accuracy = metrics["samples_per_s"]["median"], metrics["test_accuracy"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"training on {device}: no result document in {path.name} ({one_line(exc)})"
    return f"training on {device}: {rate:,.0f} samples/s (median), test accuracy {accuracy:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gpu", help="the GPU CuPy has: <stack> <device> <what>, or none - <why>")
    xla = commands.add_parser(
        "xla", help="JAX's first platform of these: <platform> <device> <what>, or none"
    )
    xla.add_argument("platforms", nargs="*", default=list(XLA_PLATFORMS), help="default: tpu gpu")
    env = commands.add_parser("environment", help="the environment file's lines for a GPU stack")
    env.add_argument("stack", choices=("cuda", "rocm"))
    parity = commands.add_parser("parity", help="one summary line of a parity result; exit 1 if it failed")
    parity.add_argument("file", type=Path)
    parity.add_argument("device")
    train = commands.add_parser("train", help="one summary line of a training result")
    train.add_argument("file", type=Path)
    train.add_argument("device")
    args = parser.parse_args()
    if args.command == "gpu":
        print(probe_gpu())
    elif args.command == "xla":
        print(probe_xla(args.platforms))
    elif args.command == "environment":
        print("\n".join(environment(args.stack)))
    elif args.command == "train":
        print(train_summary(args.file, args.device))
    else:
        line, passed = parity_summary(args.file, args.device)
        print(line)
        sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
