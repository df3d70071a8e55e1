"""The job-spec options shared by `bpbench run`, `bpbench gradcheck` and `bpbench submit`.

One table (`SPEC_OPTIONS`) says which command-line option sets which `JobSpec` field. A command
gets all of them with `@with_spec_options` (it then receives `overrides`, a dict of the options the
user gave) and turns them, on top of an optional spec file, into a validated `JobSpec` with
`spec_from_options`. Every failure is a `SpecError` whose message is one line naming the option or
field, the value seen and what is accepted; `OneLineErrorCommand` makes click's own usage errors
(unknown option, a word where a number belongs) one line too, with exit code 2.

    @app.command("submit", cls=OneLineErrorCommand)
    @with_spec_options
    def submit(spec_file: SpecFileArg = None, *, overrides: dict[str, Any]) -> None:
        spec = spec_or_exit(spec_file, overrides)
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from typer.core import TyperCommand

from engine.spec import ACTIVATIONS, DATASETS, DEVICE_SPELLINGS, DTYPES, INITS, KINDS, MODEL_NAMES, OPTIMIZERS
from services.jobs.spec import JobSpec

try:  # recent typer vendors click as typer._click; its exceptions are not click's
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - typer with a separate click
    from click.exceptions import UsageError  # type: ignore[assignment]

USAGE_EXIT_CODE = 2


class SpecError(ValueError):
    """A job spec cannot be built; a one-line message naming the option/field, the value, what is accepted."""


@dataclass(frozen=True)
class SpecOption:
    """One command-line option and the JobSpec field (dotted path) it sets."""

    name: str  # Python parameter name
    flag: str  # the option as typed, e.g. "--batch-size" or "--batchnorm/--no-batchnorm"
    field: str  # dotted JobSpec path, e.g. "optimizer.lr"
    type: Any  # int | float | str | bool
    help: str
    int_list: bool = False  # "784,50,10" -> [784, 50, 10]

    @property
    def display(self) -> str:
        """The option as the user knows it (`--batchnorm`, not `--batchnorm/--no-batchnorm`)."""
        return self.flag.split("/")[0]


SPEC_OPTIONS: tuple[SpecOption, ...] = (
    SpecOption("kind", "--kind", "kind", str, " | ".join(KINDS)),
    SpecOption("model", "--model", "model.name", str, " | ".join(MODEL_NAMES)),
    SpecOption(
        "layers", "--layers", "model.layers", str, "widths incl. input and output, e.g. 784,50,10", True
    ),
    SpecOption("activation", "--activation", "model.activation", str, " | ".join(ACTIVATIONS)),
    SpecOption("init", "--init", "model.init", str, " | ".join(INITS) + " (weight initialisation)"),
    SpecOption("weight_init_std", "--weight-init-std", "model.weight_init_std", float, "std of init 'std'"),
    SpecOption(
        "batchnorm", "--batchnorm/--no-batchnorm", "model.batchnorm", bool, "batch normalisation (mlp)"
    ),
    SpecOption("dropout", "--dropout", "model.dropout", float, "dropout ratio in [0, 1) (mlp)"),
    SpecOption("dataset", "--dataset", "dataset", str, " | ".join(DATASETS)),
    SpecOption("dataset_path", "--dataset-path", "dataset_path", str, "directory of the MNIST IDX files"),
    SpecOption(
        "synthetic_samples", "--synthetic-samples", "synthetic_samples", int, "samples of synthetic/spiral"
    ),
    SpecOption("steps", "--steps", "steps", int, "training steps"),
    SpecOption("batch_size", "--batch-size", "batch_size", int, "samples per step"),
    SpecOption(
        "optimizer",
        "--optimizer",
        "optimizer.name",
        str,
        " | ".join(OPTIMIZERS),
    ),
    SpecOption("lr", "--lr", "optimizer.lr", float, "learning rate"),
    SpecOption("momentum", "--momentum", "optimizer.momentum", float, "momentum (momentum, nesterov)"),
    SpecOption("weight_decay", "--weight-decay", "optimizer.weight_decay", float, "L2 weight decay"),
    SpecOption("dtype", "--dtype", "dtype", str, " | ".join(DTYPES)),
    SpecOption("device", "--device", "device", str, " | ".join(DEVICE_SPELLINGS)),
    SpecOption("seed", "--seed", "seed", int, "random seed (weights, minibatches)"),
    SpecOption(
        "target_accuracy", "--target-accuracy", "target_accuracy", float, "report time to this test accuracy"
    ),
    SpecOption("eval_samples", "--eval-samples", "eval_samples", int, "cap on samples used for accuracy"),
    SpecOption("loss_samples", "--loss-samples", "loss_samples", int, "points of the sampled loss curve"),
    SpecOption("warmup", "--warmup", "timing.warmup", int, "untimed warm-up steps (or repeats)"),
    SpecOption("window", "--window", "timing.window", int, "steps per timed window"),
    SpecOption("min_repeats", "--min-repeats", "timing.min_repeats", int, "least timed windows/repeats"),
    SpecOption("max_repeats", "--max-repeats", "timing.max_repeats", int, "most timed windows/repeats"),
    SpecOption(
        "target_cv", "--target-cv", "timing.target_cv", float, "stop timing when the CV falls under this"
    ),
    SpecOption(
        "gemm_sizes", "--gemm-sizes", "gemm_sizes", str, "matrix sizes for gemm, e.g. 256,512,1024", True
    ),
    SpecOption(
        "bvn_widths", "--bvn-widths", "bvn_widths", str, "hidden widths for backprop_vs_numerical", True
    ),
    SpecOption("time_limit", "--time-limit", "time_limit_s", float, "seconds before the job is stopped"),
)
OPTION_BY_FIELD = {option.field: option for option in SPEC_OPTIONS}

SpecFileArg = Annotated[
    Path | None,
    typer.Argument(help="a JSON job spec (as POST /api/v1/jobs takes it); options override its fields"),
]


def fail(message: str, exit_code: int = USAGE_EXIT_CODE) -> NoReturn:
    """Print `error: message` as one line on stderr and exit."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise typer.Exit(exit_code)


class OneLineErrorCommand(TyperCommand):
    """A typer command whose usage errors (unknown option, bad type) are one line on stderr, exit 2."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        raw = list(args)  # click consumes `args`; keep them to quote the value it refused
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            message = exc.format_message()
            value = _given_value(raw, getattr(getattr(exc, "param", None), "opts", []))
            fail(message if value is None else f"{message} (got {value!r})")


def _given_value(args: list[str], flags: list[str]) -> str | None:
    """The value typed after one of `flags` (`--steps abc` or `--steps=abc`), if any."""
    for index, arg in enumerate(args):
        for flag in flags:
            if arg == flag and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


def with_spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add every option of `SPEC_OPTIONS` to a typer command.

    The command must take a keyword parameter `overrides: dict[str, Any]`; it receives the options the
    user gave (parameter name -> value), the ones left out are absent.
    """
    # Evaluated annotations: typer must see Annotated options even under `from __future__ import annotations`.
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "overrides"]
    added = [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[option.type | None, typer.Option(option.flag, help=option.help)],
        )
        for option in SPEC_OPTIONS
    ]
    names = {option.name for option in SPEC_OPTIONS}

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        overrides = {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}
        for name in names:
            kwargs.pop(name, None)
        return func(*args, overrides=overrides, **kwargs)

    # typer reads the parameters from the signature; keyword-only ones must come last.
    ordered = [p for p in own if p.kind != inspect.Parameter.KEYWORD_ONLY]
    ordered += [p for p in own if p.kind == inspect.Parameter.KEYWORD_ONLY] + added
    command.__signature__ = signature.replace(parameters=ordered)  # type: ignore[attr-defined]
    return command


def _parse_int_list(option: SpecOption, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise SpecError(
            f"{option.display} {text!r}: expected comma-separated integers, e.g. 784,50,10"
        ) from None


def read_spec_file(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; SpecError (one line) if missing, unreadable, not JSON or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {path}: cannot be read ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"spec file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(doc, dict):
        raise SpecError(f"spec file {path}: expected a JSON object of job fields, got {type(doc).__name__}")
    return doc


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def _accepted_fields(loc: tuple[int | str, ...]) -> list[str]:
    """Field names accepted at the level of `loc` (for an 'extra field' error)."""
    model: type[BaseModel] = JobSpec
    for key in loc[:-1]:
        annotation = model.model_fields[str(key)].annotation if str(key) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_validation_error(exc: ValidationError, given: set[str], source: str | None) -> str:
    """One line for the first error: the option (if given) or field, the value seen, what is accepted."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    dotted = ".".join(str(part) for part in loc)
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a whole-spec check (e.g. two_layer_net needs 3 widths): its message names the field
        return message
    option = next(
        (OPTION_BY_FIELD[f] for f in given if dotted == f or dotted.startswith(f + ".")),
        None,
    )
    where = option.display if option is not None else (f"{source}: {dotted}" if source else dotted)
    if error["type"] == "extra_forbidden":
        accepted = _accepted_fields(loc)
        return f"{where}: unknown field; accepted: {', '.join(accepted)}"
    value = error.get("input")
    return f"{where} {json.dumps(value) if _jsonable(value) else repr(value)}: {message}"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def spec_from_options(
    spec_file: Path | None,
    overrides: dict[str, Any],
    *,
    presets: dict[str, Any] | None = None,
    forced: dict[str, Any] | None = None,
) -> JobSpec:
    """Build and validate a JobSpec: spec file, then `presets`, then the user's options, then `forced`.

    `overrides` maps `SpecOption.name` to the values given on the command line. `presets` and `forced`
    map dotted JobSpec fields to values (e.g. `bpbench gradcheck` presets `dtype=float64` and forces
    `kind=gradcheck`). Raises SpecError with a one-line message on any problem.
    """
    doc = read_spec_file(spec_file) if spec_file is not None else {}
    for dotted, value in (presets or {}).items():
        _set_path(doc, dotted, value)
    options = {option.name: option for option in SPEC_OPTIONS}
    given: set[str] = set()
    for name, value in overrides.items():
        if name not in options:
            raise SpecError(
                f"unknown option {name!r}; accepted: {', '.join(o.display for o in SPEC_OPTIONS)}"
            )
        option = options[name]
        if option.int_list and isinstance(value, str):
            value = _parse_int_list(option, value)
        _set_path(doc, option.field, value)
        given.add(option.field)
    for dotted, value in (forced or {}).items():
        if dotted in given and _get_path(doc, dotted) != value:
            option = OPTION_BY_FIELD[dotted]
            raise SpecError(f"{option.display} {_get_path(doc, dotted)!r}: this command only runs {value!r}")
        _set_path(doc, dotted, value)
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(
            describe_validation_error(exc, given, str(spec_file) if spec_file else None)
        ) from None


def _get_path(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def spec_or_exit(
    spec_file: Path | None,
    overrides: dict[str, Any],
    *,
    presets: dict[str, Any] | None = None,
    forced: dict[str, Any] | None = None,
) -> JobSpec:
    """`spec_from_options`, turning a SpecError into a one-line message and exit code 2."""
    try:
        return spec_from_options(spec_file, overrides, presets=presets, forced=forced)
    except SpecError as exc:
        fail(str(exc))
