"""The job specification: the one document that `bpbench run spec.json`, `bpbench submit` and
`POST /api/v1/jobs` all accept.

Every field has a documented default and a bounded range, so a bad value is refused with a message
that names the field, the value seen and what is accepted. `JobSpec.engine_dict()` gives the fully
populated plain dict that `engine.jobs.run_job` takes (the engine knows nothing of pydantic).

The allowed values, the defaults, the device grammar, the model defaults and the parameter count are the
engine's (`engine/spec.py`); this module states them for pydantic and mypy, and a test keeps the `Literal`s
equal to the engine's tuples.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.datasets import FIXED_CLASSES, FIXED_SIZES, SPIRAL_FEATURES
from engine.grammar import MAX_DEVICE_CHARS
from engine.spec import (
    DEFAULT_SPEC,
    GEMM_SIZES,
    DeviceSpellingError,
    default_gemm_sizes,
    default_init,
    default_layers,
    float64_refusal,
    parse_device,
)
from engine.spec import DEVICE_ACCEPTED as DEVICE_ACCEPTED
from engine.spec import DEVICE_PATTERN as DEVICE_PATTERN  # the one device grammar, re-exported
from engine.spec import count_parameters as count_parameters  # the API's parameter bound counts with it

# The engine's enumerations (engine/spec.py), spelled out for mypy; a test keeps them equal.
JobKind = Literal["train", "gradcheck", "backprop_vs_numerical", "gemm", "parity"]
ModelName = Literal["two_layer_net", "mlp", "simple_convnet"]
DatasetName = Literal["mnist5k", "mnist", "digits", "synthetic", "spiral"]
Activation = Literal["relu", "sigmoid", "tanh"]
Init = Literal["std", "xavier", "he"]
OptimizerName = Literal["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]
# The queue classes grow with the backend registry (engine.spec.DEVICE_CLASSES), so they are not a Literal.
DeviceClass = str
DType = Literal["float32", "float64"]

_MODEL: dict[str, Any] = DEFAULT_SPEC["model"]
_OPTIMIZER: dict[str, Any] = DEFAULT_SPEC["optimizer"]
_TIMING: dict[str, Any] = DEFAULT_SPEC["timing"]

# Bounds shared by the API (422) and the CLI (one-line error).
MAX_STEPS = 1_000_000
MAX_BATCH = 65_536
MAX_WIDTH = 16_384
MAX_LAYERS = 32
MAX_PARAMETERS = 200_000_000
MAX_TIME_LIMIT_S = 24 * 3600

MAX_PATH_LENGTH = 4096

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


def _storable(value: str) -> str:
    # PostgreSQL cannot store or compare a NUL character: refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("contains a NUL character; accepted: text without NUL characters (\\u0000)")
    # Nor can any database, JSON encoder or UTF-8 hold a lone surrogate: the row could not be read back.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "contains a lone UTF-16 surrogate; accepted: text of Unicode characters (no \\ud800)"
            ) from None
    return value


Text = Annotated[str, AfterValidator(_storable)]
"""A string without NUL characters or lone surrogates (every free-text field a client sends)."""


class StrictModel(BaseModel):
    # Strict: `"10"` is not a number and `true` not an integer; a spec says what it means.
    model_config = ConfigDict(extra="forbid", frozen=False, strict=True)


class ModelSpec(StrictModel):
    """The network to build.

    `layers` are the widths of an MLP including input and output (`[784, 50, 10]`); for
    `two_layer_net` it must be three widths and defaults to the textbook's 784-50-10; for
    `simple_convnet` the first entry is ignored and the input is (1, 28, 28) unless the dataset says
    otherwise.
    """

    name: ModelName = cast(ModelName, _MODEL["name"])
    layers: Annotated[list[Width], Field(min_length=2, max_length=MAX_LAYERS)] | None = None
    activation: Activation = cast(Activation, _MODEL["activation"])
    init: Init | None = None
    weight_init_std: float = Field(_MODEL["weight_init_std"], gt=0, le=10)
    batchnorm: bool = _MODEL["batchnorm"]
    dropout: float = Field(_MODEL["dropout"], ge=0.0, lt=1.0)

    def resolved_layers(self) -> list[int]:
        """The widths given, or the model's default (engine.spec)."""
        return list(self.layers) if self.layers is not None else default_layers(self.name)

    def resolved_init(self) -> str:
        """The init given, or the model's default (engine.spec)."""
        return self.init if self.init is not None else default_init(self.name)


class OptimizerSpec(StrictModel):
    name: OptimizerName = cast(OptimizerName, _OPTIMIZER["name"])
    lr: float = Field(_OPTIMIZER["lr"], gt=0, le=10)
    momentum: float = Field(_OPTIMIZER["momentum"], ge=0, lt=1)
    beta1: float = Field(_OPTIMIZER["beta1"], ge=0, lt=1)
    beta2: float = Field(_OPTIMIZER["beta2"], ge=0, lt=1)
    decay_rate: float = Field(_OPTIMIZER["decay_rate"], ge=0, lt=1)
    weight_decay: float = Field(_OPTIMIZER["weight_decay"], ge=0, le=1)


class TimingSpec(StrictModel):
    """How timings are taken: warm-up, then windows until the CV is under target or the cap is hit."""

    warmup: int = Field(_TIMING["warmup"], ge=0, le=10_000)
    window: int = Field(_TIMING["window"], ge=1, le=10_000)
    min_repeats: int = Field(_TIMING["min_repeats"], ge=1, le=10_000)
    max_repeats: int = Field(_TIMING["max_repeats"], ge=1, le=100_000)
    target_cv: float = Field(_TIMING["target_cv"], gt=0, le=1)

    @model_validator(mode="after")
    def _repeats_ordered(self) -> TimingSpec:
        if self.max_repeats < self.min_repeats:
            raise ValueError(
                f"timing.max_repeats ({self.max_repeats}) must be >= timing.min_repeats ({self.min_repeats})"
            )
        return self


class JobSpec(StrictModel):
    """A benchmark job. Fields left out take the defaults shown."""

    kind: JobKind = cast(JobKind, DEFAULT_SPEC["kind"])
    # The pattern is documented in the schema; `_device_known` checks it with a readable message.
    device: str = Field(
        DEFAULT_SPEC["device"],
        description=DEVICE_ACCEPTED,
        max_length=MAX_DEVICE_CHARS,
        json_schema_extra={"pattern": DEVICE_PATTERN.pattern},
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    dataset: DatasetName = cast(DatasetName, DEFAULT_SPEC["dataset"])
    dataset_path: Text | None = Field(
        None, max_length=MAX_PATH_LENGTH, description="directory of the IDX files, for dataset=mnist"
    )
    synthetic_samples: int = Field(DEFAULT_SPEC["synthetic_samples"], ge=16, le=1_000_000)
    steps: int = Field(DEFAULT_SPEC["steps"], ge=1, le=MAX_STEPS)
    batch_size: int = Field(DEFAULT_SPEC["batch_size"], ge=1, le=MAX_BATCH)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    dtype: DType = cast(DType, DEFAULT_SPEC["dtype"])
    seed: int = Field(DEFAULT_SPEC["seed"], ge=0, le=2**32 - 1)
    target_accuracy: float | None = Field(None, gt=0, le=1)
    loss_samples: int = Field(DEFAULT_SPEC["loss_samples"], ge=1, le=10_000)
    eval_samples: int | None = Field(None, ge=1, le=1_000_000, description="cap on samples used for accuracy")
    timing: TimingSpec = Field(default_factory=TimingSpec)
    gemm_sizes: Annotated[
        list[Annotated[int, Field(ge=16, le=MAX_WIDTH)]], Field(min_length=1, max_length=16)
    ] = Field(
        default_factory=lambda: list(DEFAULT_SPEC["gemm_sizes"]),
        description="square sizes gemm measures; when left out, the device class's: "
        + "; ".join(f"{cls} {','.join(map(str, sizes))}" for cls, sizes in GEMM_SIZES.items()),
    )
    bvn_widths: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=2, max_length=16)] = (
        Field(
            default_factory=lambda: list(DEFAULT_SPEC["bvn_widths"]),
            description="hidden widths for backprop_vs_numerical",
        )
    )
    time_limit_s: float | None = Field(None, gt=0, le=MAX_TIME_LIMIT_S)

    @model_validator(mode="before")
    @classmethod
    def _gemm_sizes_of_the_device(cls, data: Any) -> Any:
        """A gemm job that names no sizes: its device class's (up to 1024 on a CPU, up to 8192 on a GPU).
        Other kinds keep the default, so the same training spec hashes alike on every device."""
        if (
            isinstance(data, dict)
            and data.get("kind") == "gemm"
            and "gemm_sizes" not in data
            and isinstance(data.get("device"), str)
        ):
            return {**data, "gemm_sizes": default_gemm_sizes(data["device"])}
        return data

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        try:
            parse_device(value)
        except DeviceSpellingError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype_on_the_device(cls, value: str, info: ValidationInfo) -> str:
        """float64 aimed at a device that has none (a TPU) is refused here, not failed on a worker."""
        refusal = float64_refusal(str(info.data.get("device", "")), value)
        if refusal is not None:
            raise ValueError(refusal)
        return value

    @model_validator(mode="after")
    def _model_fits(self) -> JobSpec:
        layers = self.model.resolved_layers()
        if self.model.name == "two_layer_net" and len(layers) != 3:
            raise ValueError(f"model.layers for two_layer_net must be 3 widths, got {len(layers)}")
        n_params = count_parameters(layers)
        if n_params > MAX_PARAMETERS:
            raise ValueError(f"model has {n_params} parameters, accepted at most {MAX_PARAMETERS}")
        if self.dataset == "mnist" and not self.dataset_path:
            raise ValueError("dataset_path is required for dataset=mnist (a directory of the four IDX files)")
        self._fits_the_dataset(layers)
        return self

    def _fits_the_dataset(self, layers: list[int]) -> None:
        """A training job's input width and classes against its data set's, as `bpbench run` refuses them
        (the other kinds draw random inputs of the model's shape)."""
        if self.kind != "train":
            return
        features = FIXED_SIZES[self.dataset][1] if self.dataset in FIXED_SIZES else None
        if self.dataset == "spiral":
            features = SPIRAL_FEATURES
        if features is not None and self.model.name != "simple_convnet" and layers[0] != features:
            raise ValueError(
                f"dataset {self.dataset} has {features} input features per sample; model.layers starts with "
                f"{layers[0]} (use {features},...)"
            )
        classes = FIXED_CLASSES.get(self.dataset)
        if classes is not None and layers[-1] != classes:
            raise ValueError(
                f"dataset {self.dataset} has {classes} classes; model.layers ends with {layers[-1]} "
                f"(use ...,{classes})"
            )

    @property
    def device_class(self) -> DeviceClass:
        """The queue class of the spec's device: `cpu`, `gpu`, or its backend's own (`xla`, `rocm`, ...)."""
        return parse_device(self.device).device_class

    def engine_dict(self) -> dict[str, Any]:
        """The fully populated plain dict the engine takes."""
        return self._resolved(self.model_dump(mode="json"))

    def _resolved(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc["model"]["layers"] = self.model.resolved_layers()
        doc["model"]["init"] = self.model.resolved_init()
        return doc

    def spec_hash(self) -> str:
        """Canonical hash of what is measured: everything but where it runs."""
        return spec_hash_of(self.engine_dict())


def spec_hash_of(engine_doc: dict[str, Any]) -> str:
    """`JobSpec.spec_hash` of a spec's `engine_dict()` (for a caller that has the dict already)."""
    doc = {key: value for key, value in engine_doc.items() if key not in ("device", "time_limit_s")}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
