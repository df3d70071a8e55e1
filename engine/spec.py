"""The job's vocabulary: what a spec may say, what it says when it says nothing, and how a model resolves.

The engine owns these facts; the service's `JobSpec` (pydantic) validates against them and the CLI, the
API and the dashboard read them from here. Pure Python: nothing here touches an array.

- The enumerations (`KINDS`, `MODEL_NAMES`, `DATASETS`, `ACTIVATIONS`, `INITS`, `OPTIMIZERS`, `DTYPES`).
- `DEFAULT_SPEC`: the fully populated spec a job gets when it says nothing (`JobSpec().engine_dict()`).
- The one device grammar: `parse_device(text) -> DeviceRef`, built by `DeviceGrammar` (engine/grammar.py)
  from the words of the registered backends (engine/backends): a backend's words are written in its module
  only. `float64_refusal(device, dtype)`: what the spelling alone says about float64; `float64_refused`:
  the text of a float64 refusal at submission. `backends_taking(device)`: the stacks a spelling may run on.
- Model resolution: the default layers and init of each model (`resolve_model`), the input a model asks
  of its data set and the convnet's square-image reading of a flat input (`model_input`, `image_shape`).
- `count_parameters(layers)`: the weights and biases of a dense stack (the API's parameter bound).
- `GEMM_SIZES`, `default_gemm_sizes(device)`: what `gemm` measures on a device class if a spec says not.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

from engine.backends import BACKENDS, backend_of, registry_grammar
from engine.grammar import DeviceBackend as DeviceBackend  # the grammar's parts, re-exported
from engine.grammar import DeviceGrammar as DeviceGrammar
from engine.grammar import DeviceRef as DeviceRef
from engine.grammar import DeviceSpellingError as DeviceSpellingError

KINDS = ("train", "gradcheck", "backprop_vs_numerical", "gemm", "parity")
MODEL_NAMES = ("two_layer_net", "mlp", "simple_convnet")
DATASETS = ("mnist5k", "mnist", "digits", "synthetic", "spiral")
ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("std", "xavier", "he")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
DTYPES = ("float32", "float64")
# The square sizes `gemm` measures when a spec names none, per hardware class (a TPU gets a GPU's). A
# CPU's rate levels off by 1024; on a GPU a product that small is over in microseconds and times the kernel
# launch rather than the device, so a GPU's go up to 8192 (an 8192 float64 product is about 1.1 TFLOP).
GEMM_SIZES: dict[str, tuple[int, ...]] = {"cpu": (256, 512, 1024), "gpu": (1024, 2048, 4096, 8192)}

# Per model: the widths (input, hidden..., output) and the init used when the spec gives none. The
# textbook's two_layer_net uses a plain normal of std 0.01; the deeper models need He's scaling.
DEFAULT_LAYERS: dict[str, tuple[int, ...]] = {
    "two_layer_net": (784, 50, 10),
    "mlp": (784, 50, 10),
    "simple_convnet": (784, 100, 10),
}
DEFAULT_INIT: dict[str, str] = {"two_layer_net": "std", "mlp": "he", "simple_convnet": "he"}
CONVNET_HIDDEN = DEFAULT_LAYERS["simple_convnet"][1]
# The image the convnet gets from a generated set, which has no shape of its own.
CONVNET_SYNTHETIC_IMAGE = (1, 28, 28)

DEFAULT_SPEC: dict[str, Any] = {
    "kind": "train",
    "device": "cpu",
    "model": {
        "name": "two_layer_net",
        "layers": list(DEFAULT_LAYERS["two_layer_net"]),
        "activation": "relu",
        "init": DEFAULT_INIT["two_layer_net"],
        "weight_init_std": 0.01,
        "batchnorm": False,
        "dropout": 0.0,
    },
    "dataset": "mnist5k",
    "dataset_path": None,
    "synthetic_samples": 4096,
    "steps": 1000,
    "batch_size": 100,
    "optimizer": {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "beta1": 0.9,
        "beta2": 0.999,
        "decay_rate": 0.99,
        "weight_decay": 0.0,
    },
    "dtype": "float32",
    "seed": 0,
    "target_accuracy": None,
    "loss_samples": 100,
    "eval_samples": None,
    "timing": {"warmup": 5, "window": 10, "min_repeats": 5, "max_repeats": 50, "target_cv": 0.05},
    "gemm_sizes": list(GEMM_SIZES["cpu"]),  # a gemm job on a GPU gets GEMM_SIZES["gpu"] (resolve_spec)
    "bvn_widths": [2, 4, 8, 16, 32],
    "time_limit_s": None,
}


class JobError(ValueError):
    """The spec cannot be run as given (bad value, missing dataset file, unusable device)."""


# --- the device grammar -------------------------------------------------------------------------------

# Every registered backend's words (engine/backends: `cpu`; `gpu`, `gpu:N`, `cuda:N`; `rocm:N`;
# `xla:<platform>:<N>`; ...), in the registry's order. A backend's spellings are written once, in its module.
DEVICE_GRAMMAR = registry_grammar()
DEVICE_PATTERN = DEVICE_GRAMMAR.pattern
DEVICE_SPELLINGS = DEVICE_GRAMMAR.spellings
DEVICE_ACCEPTED = DEVICE_GRAMMAR.accepted  # "cpu, gpu, gpu:N, cuda:N, ...": every refusal says this
# The queue classes: `cpu` and `gpu` (NumPy, and any GPU CuPy has), then one per backend's own word.
DEVICE_CLASSES: tuple[str, ...] = DEVICE_GRAMMAR.classes


def parse_device(text: str, what: str = "device") -> DeviceRef:
    """`cpu`, `gpu:N`, `xla:tpu:0`, ... -> DeviceRef, exactly as written; anything else raises
    DeviceSpellingError.

    Callers that accept other letter cases or surrounding spaces normalise before calling.
    """
    return DEVICE_GRAMMAR.parse(text, what)


def hardware_kind(ref: DeviceRef) -> str:
    """The hardware class a device spelling names (`cpu`, `gpu`, `tpu`, ...), known without its library."""
    return backend_of(ref).hardware_kind(ref)


# What a float64 job refused on a device could be instead.
FLOAT64_ACCEPTED = "float32 on it, or float64 on a device that has it (e.g. cpu)"


def backends_taking(device: str) -> tuple[str, ...]:
    """The backends whose workers may take a job spelled `device`: those serving its queue class, in the
    registry's order (`cpu`: numpy; `gpu`: cuda and rocm, whichever GPU CuPy has; `xla:cpu:0`: xla); none
    for text that is no device."""
    try:
        device_class = parse_device(device).device_class
    except DeviceSpellingError:
        return ()
    return tuple(backend.name for backend in BACKENDS if device_class in backend.queues)


def float64_refusal(device: str, dtype: str) -> str | None:
    """Why a job of `dtype` cannot run on `device`, where the spelling alone says (the API has no
    accelerator libraries); None when it can, or when only the device itself can tell (the worker checks)."""
    if dtype != "float64":
        return None
    try:
        ref = parse_device(device)
    except DeviceSpellingError:
        return None  # the device itself is refused where it is checked
    if backend_of(ref).float64_by_spelling(ref) is not False:
        return None
    return float64_refused(device, f"{backend_of(ref).name} has no float64 on {hardware_kind(ref)}")


def float64_refused(device: str, why: str) -> str:
    """The refusal of a float64 job on `device` at submission, `why` being what says it has none (its
    spelling, or the devices registered for it); the worker's own check names the same way out."""
    return f"float64 cannot run on device {device!r} ({why}); accepted: {FLOAT64_ACCEPTED}"


def default_gemm_sizes(device: str) -> list[int]:
    """The gemm sizes of a spec on `device` that names none (its device class's `GEMM_SIZES`).

    Any letter case and surrounding spaces are taken, as the worker takes them; text that is no device
    gets the CPU's sizes (the device itself is refused where it is checked).
    """
    try:
        kind = hardware_kind(parse_device(device.strip().lower()))
    except (DeviceSpellingError, AttributeError):
        kind = "cpu"
    return list(GEMM_SIZES["cpu" if kind == "cpu" else "gpu"])


# --- model resolution ---------------------------------------------------------------------------------


def default_layers(model_name: str) -> list[int]:
    """The widths a model gets when the spec gives none."""
    return list(DEFAULT_LAYERS.get(model_name, DEFAULT_LAYERS["two_layer_net"]))


def default_init(model_name: str) -> str:
    """The weight init a model gets when the spec gives none."""
    return DEFAULT_INIT.get(model_name, "he")


def resolve_model(model: dict[str, Any]) -> dict[str, Any]:
    """The model dict with `layers` and `init` filled in where they are missing or None."""
    resolved = dict(model)
    name = str(resolved.get("name") or DEFAULT_SPEC["model"]["name"])
    if resolved.get("layers") is None:
        resolved["layers"] = default_layers(name)
    if resolved.get("init") is None:
        resolved["init"] = default_init(name)
    return resolved


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """How the convnet reads an input: images as they are, a flat square (784) as (1, 28, 28), else None."""
    if len(input_shape) != 1:
        return tuple(input_shape)
    side = math.isqrt(input_shape[0])
    return (1, side, side) if side * side == input_shape[0] else None


def model_input(spec: dict[str, Any]) -> tuple[tuple[int, ...] | None, int]:
    """The per-sample input shape the model asks of the data set (None: the set's own) and its classes."""
    model = spec["model"]
    layers = [int(w) for w in model["layers"]]
    if model["name"] == "simple_convnet":
        shape = CONVNET_SYNTHETIC_IMAGE if spec["dataset"] == "synthetic" else None
        return shape, layers[-1]
    return (layers[0],), layers[-1]


def count_parameters(layers: list[int]) -> int:
    """Weights and biases of a dense stack of these widths."""
    return sum(a * b + b for a, b in itertools.pairwise(layers))


def resolve_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every missing field (and nested field) taken from DEFAULT_SPEC, the model resolved
    (a gemm job's sizes: its device class's, `default_gemm_sizes`).

    Raises JobError on a field DEFAULT_SPEC does not know.
    """
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    merged: dict[str, Any] = {}
    for key, default in DEFAULT_SPEC.items():
        value = spec.get(key, copy.deepcopy(default))
        if isinstance(default, dict) and isinstance(value, dict):
            value = {**default, **value}
        merged[key] = value
    if merged["kind"] == "gemm" and "gemm_sizes" not in spec:
        merged["gemm_sizes"] = default_gemm_sizes(merged["device"])
    given = spec.get("model") or {}
    merged["model"] = resolve_model({**merged["model"], **{k: given.get(k) for k in ("layers", "init")}})
    if unknown:
        raise JobError(f"unknown spec field(s) {', '.join(unknown)}; accepted: {', '.join(DEFAULT_SPEC)}")
    return merged
