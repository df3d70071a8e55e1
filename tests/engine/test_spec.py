"""engine/spec.py: the job's vocabulary, the one device grammar and model resolution, owned by the engine."""

from __future__ import annotations

import re

import pytest

from engine import backend, datasets, networks, optimizers
from engine.kinds.base import DTYPE_BYTES, OPTIMIZER_STATE_COPIES
from engine.spec import (
    ACTIVATIONS,
    DATASETS,
    DEFAULT_SPEC,
    DEVICE_ACCEPTED,
    DEVICE_PATTERN,
    DTYPES,
    GEMM_SIZES,
    INITS,
    MODEL_NAMES,
    OPTIMIZERS,
    DeviceBackend,
    DeviceGrammar,
    DeviceRef,
    DeviceSpellingError,
    JobError,
    count_parameters,
    default_gemm_sizes,
    image_shape,
    parse_device,
    resolve_model,
    resolve_spec,
)

# The three grammars before they became one: the API's (what a job may say), the worker's, the engine's;
# since the backend registry, the words of cuda, rocm, oneapi and xla besides.
API_DEVICE = re.compile(r"^(cpu|gpu|gpu:\d{1,2})$")
REGISTRY_DEVICE = re.compile(
    r"^(cuda:\d{1,2}|rocm:\d{1,2}|oneapi:((opencl|level_zero|cuda|hip):)?(cpu|gpu|accelerator)(:\d{1,2})?"
    r"|xla:(cpu|gpu|cuda|rocm|tpu):\d{1,2})$"
)
SPELLINGS = [
    "cpu", "gpu", "gpu:0", "gpu:7", "gpu:07", "gpu:99", "gpu:100", "cpu:0", "GPU", "Cpu", " cpu", "cpu ",
    "cpu\n", "gpu:", "gpu:-1", "gpu:1a", "tpu", "cuda:0", "", "gpu:0:1", "cuda", "cuda:100", "rocm:3",
    "rocm", "xla:tpu:0", "xla:cpu:0", "xla:cpu", "xla:0", "xla:tpu:0:1", "XLA:tpu:0", "xla:npu:0",
    "opencl:cpu:0", "numpy", "cuda:0\n", "oneapi:opencl:cpu:0", "oneapi:level_zero:gpu:1", "oneapi:gpu",
    "oneapi", "oneapi:0", "oneapi:opencl::0", "oneapi:vulkan:gpu:0", "oneapi:opencl:cpu:100",
]  # fmt: skip


@pytest.mark.parametrize("text", SPELLINGS)
def test_the_device_grammar_accepts_what_the_api_accepted_and_the_registered_backends_words(
    text: str,
) -> None:
    # Except the API's one slip: `$` let a trailing newline through ("cpu\n"); the grammar refuses it.
    accepted = API_DEVICE.fullmatch(text) is not None or REGISTRY_DEVICE.fullmatch(text) is not None
    if accepted:
        assert parse_device(text).name == text
    else:
        with pytest.raises(
            DeviceSpellingError, match=re.escape(f"device must be {DEVICE_ACCEPTED}, got {text!r}")
        ):
            parse_device(text)


@pytest.mark.parametrize("text", ["cpu\n", "gpu:0\n", "gpu:\u0661", "gpu:\uff11", "gpu:\u0967\u0968"])
def test_the_device_grammar_refuses_a_trailing_newline_and_digits_other_than_ascii(text: str) -> None:
    with pytest.raises(DeviceSpellingError, match=re.escape(f"got {text!r}")):
        parse_device(text)


def test_the_published_device_pattern_and_message_are_the_registrys_words_in_order() -> None:
    # Today's spellings first, as before; each backend's words after them.
    assert DEVICE_PATTERN.pattern == (
        r"^(cpu|gpu|gpu:\d{1,2}|cuda:\d{1,2}|rocm:\d{1,2}"
        r"|oneapi:(?:(?:opencl|level_zero|cuda|hip):)?(?:cpu|gpu|accelerator)(?::\d{1,2})?"
        r"|xla:(?:cpu|gpu|cuda|rocm|tpu):\d{1,2}|opencl:\d{1,2}:\d{1,2})$"
    )
    assert DEVICE_ACCEPTED == (
        "cpu, gpu, gpu:N, cuda:N, rocm:N, oneapi:<SYCL filter>, xla:<platform>:<N> or "
        "opencl:<platform>:<device> (N = 0..99)"
    )


def test_a_parsed_device_has_a_backend_an_index_and_a_queue_class() -> None:
    assert parse_device("gpu:07") == DeviceRef("gpu", "07")
    assert (parse_device("gpu:07").index, parse_device("gpu:07").device_class) == (7, "gpu")
    assert (parse_device("gpu").index, parse_device("gpu").name) == (None, "gpu")
    assert (parse_device("cpu").device_class, parse_device("cpu").index) == ("cpu", None)


def test_the_grammar_grows_by_one_backend_entry_each() -> None:
    grammar = DeviceGrammar(
        (
            DeviceBackend("cpu"),
            DeviceBackend("cuda", selector=r"\d{1,2}", bare=False, selector_range="0..99"),
            DeviceBackend("xla", selector=r"[a-z]{1,8}:\d{1,2}", bare=False, selector_name="<platform>:<N>"),
            DeviceBackend("opencl", selector=r"\d{1,2}:\d{1,2}", bare=False, selector_name="<p>:<d>"),
        )
    )

    assert grammar.parse("xla:tpu:3") == DeviceRef("xla", "tpu:3")
    assert grammar.parse("cuda:2").index == 2 and grammar.parse("cuda:2").device_class == "gpu"
    assert grammar.parse("opencl:0:1").selector == "0:1"
    assert grammar.accepted == "cpu, cuda:N, xla:<platform>:<N> or opencl:<p>:<d> (N = 0..99)"
    with pytest.raises(DeviceSpellingError, match="got 'cuda'"):
        grammar.parse("cuda")


def test_the_engine_resolves_devices_with_the_same_grammar_after_normalising_case_and_spaces() -> None:
    assert backend.resolve_device(" CPU ") == backend.CPU
    with pytest.raises(backend.DeviceError, match=r"unknown device 'gpu:100'; accepted: cpu, gpu, gpu:N"):
        backend.resolve_device("gpu:100")


def test_every_engine_registry_names_exactly_the_vocabulary() -> None:
    assert tuple(networks.ACTIVATIONS) == ACTIVATIONS
    assert networks.INITS == INITS and networks.MODEL_NAMES == MODEL_NAMES
    assert tuple(optimizers.OPTIMIZERS) == OPTIMIZERS == tuple(OPTIMIZER_STATE_COPIES)
    assert datasets.DATASETS == DATASETS
    assert backend.SUPPORTED_DTYPES == DTYPES == tuple(DTYPE_BYTES)


@pytest.mark.parametrize(
    ("name", "layers", "init"),
    [
        ("two_layer_net", [784, 50, 10], "std"),
        ("mlp", [784, 50, 10], "he"),
        ("simple_convnet", [784, 100, 10], "he"),
    ],
)
def test_a_model_without_layers_or_init_gets_its_own_defaults(
    name: str, layers: list[int], init: str
) -> None:
    assert resolve_model({"name": name, "layers": None, "init": None}) == {
        "name": name,
        "layers": layers,
        "init": init,
    }
    assert resolve_model({"name": name, "layers": [4, 3], "init": "xavier"})["layers"] == [4, 3]


def test_the_convnet_reads_a_flat_square_input_as_one_channel_image() -> None:
    assert image_shape((784,)) == (1, 28, 28)
    assert image_shape((64,)) == (1, 8, 8)
    assert image_shape((2,)) is None
    assert image_shape((3, 8, 8)) == (3, 8, 8)


def test_parameters_of_a_dense_stack_are_weights_and_biases() -> None:
    assert count_parameters([784, 50, 10]) == 784 * 50 + 50 + 50 * 10 + 10 == 39_760


@pytest.mark.parametrize(
    ("device", "sizes"),
    [
        ("cpu", [256, 512, 1024]),
        ("gpu", [1024, 2048, 4096, 8192]),
        (" GPU:2 ", [1024, 2048, 4096, 8192]),  # as the worker and resolve_device take it
        ("tpu:0", [256, 512, 1024]),  # no device: refused where devices are checked, not here
    ],
)
def test_gemm_sizes_default_to_the_device_classs(device: str, sizes: list[int]) -> None:
    assert default_gemm_sizes(device) == sizes
    assert max(GEMM_SIZES["gpu"]) == 8192 and DEFAULT_SPEC["gemm_sizes"] == list(GEMM_SIZES["cpu"])


def test_a_resolved_spec_fills_every_default_and_refuses_unknown_fields() -> None:
    assert resolve_spec({}) == DEFAULT_SPEC
    convnet = resolve_spec({"model": {"name": "simple_convnet"}})["model"]
    assert (convnet["layers"], convnet["init"], convnet["activation"]) == ([784, 100, 10], "he", "relu")
    with pytest.raises(JobError, match="unknown spec field"):
        resolve_spec({"stepz": 3})
