"""The job's vocabulary: what a spec may say, what it says when it says nothing, and how a model resolves.

The engine owns these facts; the service's `JobSpec` (pydantic) validates against them and the CLI, the
API and the dashboard read them from here. Pure Python: nothing here touches an array.

- The enumerations (`KINDS`, `MODEL_NAMES`, `DATASETS`, `ACTIVATIONS`, `INITS`, `OPTIMIZERS`, `DTYPES`).
- `DEFAULT_SPEC`: the fully populated spec a job gets when it says nothing (`JobSpec().engine_dict()`).
- The one device grammar: `parse_device(text) -> DeviceRef`, built by `DeviceGrammar` from its backends. A
  backend is a name and what may follow its colon; adding `cuda:N` or `xla:<platform>:<N>` later is one
  more `DeviceBackend` in `DEVICE_GRAMMAR`.
- Model resolution: the default layers and init of each model (`resolve_model`), the input a model asks
  of its data set and the convnet's square-image reading of a flat input (`model_input`, `image_shape`).
- `count_parameters(layers)`: the weights and biases of a dense stack (the API's parameter bound).
- `GEMM_SIZES`, `default_gemm_sizes(device)`: what `gemm` measures on a device class if a spec says not.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

KINDS = ("train", "gradcheck", "backprop_vs_numerical", "gemm", "parity")
MODEL_NAMES = ("two_layer_net", "mlp", "simple_convnet")
DATASETS = ("mnist5k", "mnist", "digits", "synthetic", "spiral")
ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("std", "xavier", "he")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
DTYPES = ("float32", "float64")
DEVICE_CLASSES = ("cpu", "gpu")
# The square sizes `gemm` measures when a spec names none, per device class. A CPU's rate levels off by
# 1024; on a GPU a product that small is over in microseconds and times the kernel launch rather than the
# device, so a GPU's go up to 8192 (an 8192 float64 product is about 1.1 TFLOP).
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


@dataclass(frozen=True)
class DeviceBackend:
    """One backend of the device grammar: its name and what may follow `name:`.

    `selector` is a regular expression for the text after the colon (None: the backend takes none);
    `bare` says whether the name alone is accepted too. `selector_name` and `selector_range` describe
    the selector in messages (`gpu:N (N = 0..99)`).
    """

    name: str
    selector: str | None = None
    bare: bool = True
    selector_name: str = "N"
    selector_range: str = ""

    def spellings(self) -> list[str]:
        """How this backend may be written, for messages: `gpu`, `gpu:N`."""
        forms = [self.name] if self.bare or self.selector is None else []
        if self.selector is not None:
            forms.append(f"{self.name}:{self.selector_name}")
        return forms

    def alternatives(self) -> list[str]:
        """The regular-expression alternatives of this backend."""
        forms = [re.escape(self.name)] if self.bare or self.selector is None else []
        if self.selector is not None:
            forms.append(f"{re.escape(self.name)}:{self.selector}")
        return forms


class DeviceSpellingError(ValueError):
    """The text is not a device of the grammar; the message names it and the accepted spellings."""


@dataclass(frozen=True)
class DeviceRef:
    """A parsed device: its backend and what followed the colon (`gpu:3` -> backend gpu, selector 3)."""

    backend: str
    selector: str | None = None

    @property
    def index(self) -> int | None:
        """The numeric selector (`gpu:3` -> 3), or None."""
        return int(self.selector) if self.selector is not None and self.selector.isdigit() else None

    @property
    def device_class(self) -> str:
        """The queue class the device belongs to: `cpu` or `gpu` (every accelerator)."""
        return "cpu" if self.backend == "cpu" else "gpu"

    @property
    def name(self) -> str:
        return self.backend if self.selector is None else f"{self.backend}:{self.selector}"


class DeviceGrammar:
    """The spellings of devices, from a list of backends: one regular expression, one message, one parser."""

    def __init__(self, backends: tuple[DeviceBackend, ...]) -> None:
        self.backends = backends
        alternatives = [a for backend in backends for a in backend.alternatives()]
        # ASCII: `\d` and `\w` in a selector match only 0-9 and a-z; `parse` uses `fullmatch`, so a trailing
        # newline (which `$` lets through) is refused too. The anchors stay for the JSON schema's `pattern`.
        self.pattern = re.compile("^(" + "|".join(alternatives) + ")$", re.ASCII)
        self.spellings: tuple[str, ...] = tuple(s for backend in backends for s in backend.spellings())
        ranges = ", ".join(f"{b.selector_name} = {b.selector_range}" for b in backends if b.selector_range)
        listed = f"{', '.join(self.spellings[:-1])} or {self.spellings[-1]}"
        self.accepted = listed + (f" ({ranges})" if ranges else "")

    def parse(self, text: str, what: str = "device") -> DeviceRef:
        """The DeviceRef `text` spells, exactly as written; anything else raises DeviceSpellingError."""
        match = self.pattern.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise DeviceSpellingError(f"{what} must be {self.accepted}, got {text!r}")
        backend, _, selector = match.group(1).partition(":")
        return DeviceRef(backend, selector or None)


# Today's devices: the CPU and CUDA GPUs by index. The API has always taken at most two digits.
DEVICE_GRAMMAR = DeviceGrammar(
    (DeviceBackend("cpu"), DeviceBackend("gpu", selector=r"\d{1,2}", selector_range="0..99"))
)
DEVICE_PATTERN = DEVICE_GRAMMAR.pattern
DEVICE_SPELLINGS = DEVICE_GRAMMAR.spellings
DEVICE_ACCEPTED = DEVICE_GRAMMAR.accepted  # "cpu, gpu or gpu:N (N = 0..99)": every refusal says this


def parse_device(text: str, what: str = "device") -> DeviceRef:
    """`cpu`, `gpu` or `gpu:N` -> DeviceRef, exactly as written; anything else raises DeviceSpellingError.

    Callers that accept other letter cases or surrounding spaces normalise before calling.
    """
    return DEVICE_GRAMMAR.parse(text, what)


def default_gemm_sizes(device: str) -> list[int]:
    """The gemm sizes of a spec on `device` that names none (its device class's `GEMM_SIZES`).

    Any letter case and surrounding spaces are taken, as the worker takes them; text that is no device
    gets the CPU's sizes (the device itself is refused where it is checked).
    """
    try:
        device_class = parse_device(device.strip().lower()).device_class
    except (DeviceSpellingError, AttributeError):
        device_class = "cpu"
    return list(GEMM_SIZES[device_class])


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
