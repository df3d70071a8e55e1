"""The engine on OpenCL (the `opencl` backend), run here on pocl's CPU device: the same layer classes over
`engine.backends.opencl_numpy` (GEMM by CLBlast), against the NumPy float64 reference.

Bounds: the parity kind's (`engine.kinds.parity.PARITY_BOUNDS`): float64 within 1e-7 (measured ~1e-13),
float32 within its rounding bound.

Skipped without PyOpenCL, pyclblast or an OpenCL device, a failure under CI=true (CI installs pocl,
CLBlast and the `opencl` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

from engine.backend import Device, resolve_device
from engine.backends import backend_named
from engine.backends.base import DeviceError
from engine.jobs import run_job
from engine.kinds import parity
from tests.support.needs import missing

DEVICE = "opencl:0:0"


@pytest.fixture(scope="module")
def opencl() -> Device:
    """pocl's CPU device (the first of the first platform); a skip without it, a failure under CI=true."""
    try:
        importlib.import_module("pyopencl")
        importlib.import_module("pyclblast")
        return resolve_device(DEVICE)
    except (ImportError, DeviceError) as exc:
        message = (
            "PyOpenCL, pyclblast and an OpenCL device are needed for the opencl backend's tests "
            f"(apt-get install pocl-opencl-icd libclblast-dev; pip install 'bpbench[opencl]'): {exc}"
        )
        missing(message)


@pytest.mark.parametrize("preset", list(parity.PARITY_PRESETS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_preset_backprops_within_the_parity_bound_of_the_numpy_float64_reference(
    opencl: Device, preset: str, dtype: str
) -> None:
    model, shape = parity.PARITY_PRESETS[preset]
    errors = parity.compare_preset(model, shape, dtype, opencl, seed=5)
    assert errors["max_relative_error"] <= parity.PARITY_BOUNDS[dtype]
    if dtype == "float64":
        assert errors["max_relative_error"] < 1e-10  # summation order only


def test_the_parity_job_passes_on_the_device_in_float64(opencl: Device) -> None:
    result = run_job({"kind": "parity", "dtype": "float64", "device": DEVICE})
    assert result["metrics"]["passed"] is True
    assert result["fingerprint"]["backend"]["name"] == "opencl"


def test_a_short_train_reaches_the_numpy_backends_accuracy(opencl: Device) -> None:
    spec = {"kind": "train", "steps": 300, "dataset": "mnist5k", "seed": 0}
    on_cpu = run_job({**spec, "device": "cpu"})
    on_opencl = run_job({**spec, "device": DEVICE})
    assert abs(on_opencl["metrics"]["test_accuracy"] - on_cpu["metrics"]["test_accuracy"]) <= 0.01
    assert on_opencl["metrics"]["test_accuracy"] > 0.8
    assert on_opencl["metrics"]["samples_per_s"]["median"] > 0


def test_the_result_document_has_the_cpus_keys_and_an_opencl_fingerprint(opencl: Device) -> None:
    spec = {"kind": "train", "steps": 60, "dataset": "mnist5k", "seed": 1}
    on_cpu = run_job({**spec, "device": "cpu"})
    on_opencl = run_job({**spec, "device": DEVICE})
    assert set(on_opencl) == set(on_cpu)
    assert set(on_opencl["metrics"]) == set(on_cpu["metrics"])
    stack = on_opencl["fingerprint"]["backend"]
    assert stack["name"] == "opencl" and stack["library"] == "pyopencl"
    assert stack["vendor"] == on_cpu["fingerprint"]["backend"]["vendor"]  # pocl on a CPU: the host's CPU
    assert stack["opencl"]["platform_name"] and stack["driver_version"]
    assert stack["opencl"]["pyclblast_version"]


def test_float64_is_the_devices_own_answer(opencl: Device) -> None:
    backend = backend_named("opencl")
    found = backend.cl_device(opencl)  # type: ignore[attr-defined]
    assert backend.supports_float64(opencl) is bool(found.double_fp_config)


def test_a_device_this_host_lacks_is_refused_with_what_is_available(opencl: Device) -> None:
    with pytest.raises(DeviceError, match=r"available: opencl:0:0"):
        resolve_device("opencl:9:9")


def test_list_devices_names_the_exact_spelling(opencl: Device) -> None:
    spellings = [info.spelling for info in backend_named("opencl").devices()]
    assert DEVICE in spellings


def test_matmul_takes_transposed_operands_without_a_copy_and_matches_numpy(opencl: Device) -> None:
    xp: Any = opencl.xp
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 5)), rng.random((7, 3))
    da, db = xp.asarray(a), xp.asarray(b)
    out = xp.empty((5, 3), dtype=np.float64)
    result = xp.matmul(da.T, db, out=out)
    assert result is out
    np.testing.assert_allclose(np.asarray(result), a.T @ b, rtol=1e-12)


def test_axis_reductions_and_broadcasting_match_numpy(opencl: Device) -> None:
    xp: Any = opencl.xp
    host = np.random.default_rng(1).random((6, 4))
    x = xp.asarray(host)
    np.testing.assert_allclose(np.asarray(x.sum(axis=0)), host.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(x.T.max(axis=0)), host.T.max(axis=0))
    np.testing.assert_allclose(np.asarray(x - x.mean(axis=0)), host - host.mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(x.argmax(axis=1)), host.argmax(axis=1))


# --- the fused chains: each equals its plain chain on the same device, element for element -------------


def plain_softmax(xp: Any, x: Any, t: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`SoftmaxWithLoss.forward`'s plain chain for integer labels: (softmax (K, N), target, total)."""
    n, k = x.shape
    s = xp.empty((k, n), x.dtype)
    s[...] = x.T
    s -= s.max(axis=0)
    target = s[t, xp.arange(n)]
    s = xp.exp(s, out=s)
    total = s.sum(axis=0)
    s /= total
    return np.asarray(s), np.asarray(target), np.asarray(total)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_fused_relu_equals_the_mask_product_on_any_layout(opencl: Device, dtype: str, layout: str) -> None:
    xp: Any = opencl.xp
    host = np.random.default_rng(2).standard_normal((13, 7)).astype(dtype)
    host[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    x = {
        "contiguous": xp.asarray(host),
        "transposed": xp.asarray(np.ascontiguousarray(host.T)).T,
        "strided": xp.asarray(np.repeat(host, 2, axis=1))[:, ::2],
    }[layout]
    mask, out = xp.empty((13, 7), np.bool_), xp.empty((13, 7), dtype)
    assert xp.fused_relu(x, mask, out) is out
    np.testing.assert_array_equal(np.asarray(mask), host > 0)
    with np.errstate(invalid="ignore"):  # inf * 0 in the expected value: NaN, as on the device
        expected = host * (host > 0)
    np.testing.assert_array_equal(np.asarray(out), expected)  # NaN stays NaN, -0.0 gives 0.0


def test_fused_relu_may_overwrite_its_input(opencl: Device) -> None:
    xp: Any = opencl.xp
    host = np.random.default_rng(3).standard_normal((5, 11)).astype(np.float32)
    x = xp.asarray(host)
    mask = xp.empty(x.shape, np.bool_)
    assert xp.fused_relu(x, mask, x) is x
    np.testing.assert_array_equal(np.asarray(x), host * (host > 0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("labels", ["int64", "int32", "strided int64"])
@pytest.mark.parametrize("scores", ["contiguous", "transposed"])
def test_fused_softmax_cross_entropy_equals_the_plain_chain(
    opencl: Device, dtype: str, labels: str, scores: str
) -> None:
    xp: Any = opencl.xp
    rng = np.random.default_rng(4)
    n, k = 9, 7
    host = (5 * rng.standard_normal((n, k))).astype(dtype)
    host[2] = 1e3  # a row that would overflow exp without the shift
    x = xp.asarray(host) if scores == "contiguous" else xp.asarray(np.ascontiguousarray(host.T)).T
    t_host = rng.integers(0, k, n)
    t = {
        "int64": xp.asarray(t_host),
        "int32": xp.asarray(t_host.astype(np.int32)),
        "strided int64": xp.asarray(np.repeat(t_host, 3))[::3],
    }[labels]
    out = xp.empty((k, n), dtype)
    s, target, total = xp.fused_softmax_cross_entropy(x, t, out=out)
    assert s is out
    plain = plain_softmax(xp, x, t)
    for fused, expected in zip((s, target, total), plain, strict=True):
        np.testing.assert_array_equal(np.asarray(fused), expected)
    shifted = host - host.max(axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(s).T, np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True), rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(target), shifted[np.arange(n), t_host], rtol=1e-6)


def test_fused_softmax_keeps_each_calls_target_and_total(opencl: Device) -> None:
    xp: Any = opencl.xp
    x = xp.asarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    t = xp.asarray(np.array([0, 1, 2, 0]))
    out = xp.empty((3, 4), np.float32)
    _, target, total = xp.fused_softmax_cross_entropy(x, t, out=out)
    kept = np.asarray(target), np.asarray(total)
    xp.fused_softmax_cross_entropy(x * 2.0, t, out=out)  # a pending loss still reads the first call's
    np.testing.assert_array_equal(np.asarray(target), kept[0])
    np.testing.assert_array_equal(np.asarray(total), kept[1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_softmax_backward_equals_scale_then_subtract_at_the_labels(opencl: Device, dtype: str) -> None:
    xp: Any = opencl.xp
    rng = np.random.default_rng(6)
    k, n = 7, 9
    y_host = rng.random((k, n)).astype(dtype)
    t_host = rng.integers(0, k, n)
    y, t = xp.asarray(y_host), xp.asarray(t_host)
    scale = 1.0 / n
    plain = xp.multiply(y, scale)
    plain[t, xp.arange(n)] += -scale
    out = xp.empty((k, n), dtype)
    assert xp.fused_softmax_cross_entropy_backward(y, t, scale, out=out) is out
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
    expected = y_host * y_host.dtype.type(scale)
    expected[t_host, np.arange(n)] += y_host.dtype.type(-scale)
    np.testing.assert_array_equal(np.asarray(out), expected)
    # a transposed view of the softmax (the (N, K) rows a caller may hold) reads the same numbers
    view = xp.asarray(np.ascontiguousarray(y_host.T)).T
    np.testing.assert_array_equal(
        np.asarray(xp.fused_softmax_cross_entropy_backward(view, t, scale, out=out)), expected
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_sgd_equals_the_two_rounding_update_of_every_parameter(opencl: Device, dtype: str) -> None:
    xp: Any = opencl.xp
    rng = np.random.default_rng(7)
    shapes = [(13, 5), (5,), (5, 3), (3,), (1,)]
    params_host = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads_host = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [xp.asarray(p) for p in params_host]
    grads = [xp.asarray(g) for g in grads_host]
    strided_param = xp.asarray(np.repeat(params_host[2], 2, axis=1))[:, ::2]  # not contiguous: the plain path
    params[2] = strided_param
    xp.fused_sgd(params, grads, 0.1)
    lr = np.dtype(dtype).type(0.1)
    for p, p_host, g_host in zip(params, params_host, grads_host, strict=True):
        np.testing.assert_array_equal(np.asarray(p), p_host - g_host * lr)


def test_indexing_reads_index_arrays_that_are_strided_views(opencl: Device) -> None:
    xp: Any = opencl.xp
    host = np.arange(20.0).reshape(4, 5)
    a = xp.asarray(host)
    rows = xp.asarray(np.array([3, 9, 0, 9, 2, 9]))[::2]  # 3, 0, 2
    cols = xp.asarray(np.array([1, 4, 4]))
    np.testing.assert_array_equal(np.asarray(a[rows, cols]), host[[3, 0, 2], [1, 4, 4]])
    np.testing.assert_array_equal(np.asarray(xp.take(a, rows, axis=0)), host[[3, 0, 2]])


def test_a_kernel_run_twice_with_other_offsets_and_scalars_uses_the_new_ones(opencl: Device) -> None:
    xp: Any = opencl.xp
    host = np.arange(10, dtype=np.float32).reshape(2, 5)
    a = xp.asarray(host)
    first, second = xp.multiply(a[0], 2.0), xp.multiply(a[1], 3.0)  # one kernel, its arguments changed
    np.testing.assert_array_equal(np.asarray(first), host[0] * 2)
    np.testing.assert_array_equal(np.asarray(second), host[1] * 3)
    np.testing.assert_array_equal(np.asarray(xp.multiply(a[0], 2.0)), host[0] * 2)


@pytest.mark.parametrize("model", ["two_layer_net", "mlp"])
def test_training_steps_with_the_fused_chains_equal_the_plain_ones(
    opencl: Device, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import layers, optimizers
    from engine.networks import mlp, two_layer_net
    from engine.optimizers import SGD

    def build() -> Any:
        if model == "two_layer_net":
            return two_layer_net(
                input_size=20, hidden_size=9, output_size=5, dtype="float32", device=opencl, seed=1
            )
        return mlp([20, 11, 7, 5], dtype="float32", device=opencl, seed=1)

    rng = np.random.default_rng(8)
    batches = [(rng.standard_normal((6, 20)).astype(np.float32), rng.integers(0, 5, 6)) for _ in range(3)]

    def train() -> tuple[dict[str, np.ndarray], float]:
        net, optimizer = build(), SGD(0.1)
        for x, t in batches:
            net.train_step(x, t, optimizer)
        return {k: np.asarray(v) for k, v in net.params.items()}, float(net.last_layer.loss)

    fused_params, fused_loss = train()
    monkeypatch.setattr(layers, "fused_form", lambda xp, name: None)
    monkeypatch.setattr(optimizers, "fused_form", lambda xp, name: None)
    plain_params, plain_loss = train()
    assert fused_loss == plain_loss
    for key, value in plain_params.items():
        np.testing.assert_array_equal(fused_params[key], value, err_msg=key)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_stack_of_products_matches_numpy_in_each_layout_the_convolution_uses(
    opencl: Device, dtype: str
) -> None:
    xp: Any = opencl.xp
    rng = np.random.default_rng(9)
    w, col, dout = (rng.standard_normal(s).astype(dtype) for s in ((4, 6), (5, 6, 7), (5, 4, 7)))
    dw, dcol, dd = xp.asarray(w), xp.asarray(col), xp.asarray(dout)
    cases = [
        (xp.matmul(dw, dcol), w @ col),  # forward: one 2-d operand for every product
        (xp.matmul(dd, dcol.transpose(0, 2, 1)), dout @ col.transpose(0, 2, 1)),  # transposed slices
        (xp.matmul(dw.T, dd), w.T @ dout),
        (xp.matmul(dd[1:4], dcol[1:4].transpose(0, 2, 1)), dout[1:4] @ col[1:4].transpose(0, 2, 1)),  # offset
    ]
    for found, expected in cases:
        np.testing.assert_allclose(np.asarray(found), expected, rtol=1e-5, atol=1e-5)


def test_releasing_memory_lets_go_of_the_buffers_kernels_last_ran_on(opencl: Device) -> None:
    from engine.backend import release_memory

    xp: Any = opencl.xp
    a = xp.asarray(np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(xp.multiply(a, 2.0)), np.arange(6) * 2)
    buffer = a.storage.base_data

    def held() -> bool:
        return any(value is buffer for kernel in xp._kernels.values() for value in kernel.last)

    assert held()  # the multiply kernel keeps its last arguments, this buffer among them
    release_memory()
    assert not held()
    np.testing.assert_array_equal(np.asarray(xp.multiply(a, 3.0)), np.arange(6) * 3)  # arguments set again
