"""BLAS threads by product size: small products on one thread, large ones up to the process's count."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from engine.blas_threads import POOL, WORK_PER_THREAD, matmul, sized_products
from engine.networks import two_layer_net


def openblas_threads() -> set[int]:
    return {int(p["num_threads"]) for p in threadpool_info() if p["internal_api"] == "openblas"}


@pytest.fixture
def two_threads() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        if openblas_threads() != {2}:
            pytest.skip(f"NumPy's BLAS is not OpenBLAS or cannot run 2 threads here: {threadpool_info()}")
        yield


def operands(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((m, k)), rng.random((k, n)), np.empty((m, n))


@pytest.mark.usefixtures("two_threads")
def test_a_small_product_runs_on_one_thread_and_a_large_one_on_the_ceiling() -> None:
    small, large = operands(100, 100, 50), operands(256, 256, 2 * WORK_PER_THREAD // (256 * 256))
    with sized_products():
        matmul(np, *small)
        assert openblas_threads() == {1}
        matmul(np, *large)
        assert openblas_threads() == {2}
    assert openblas_threads() == {2}


@pytest.mark.usefixtures("two_threads")
def test_the_ceiling_is_the_count_the_process_set() -> None:
    large = operands(256, 256, 4 * WORK_PER_THREAD // (256 * 256))
    with threadpool_limits(limits=1, user_api="blas"), sized_products():
        matmul(np, *large)
        assert openblas_threads() == {1}
    assert openblas_threads() == {2}


@pytest.mark.usefixtures("two_threads")
def test_a_training_step_leaves_the_thread_count_as_it_found_it() -> None:
    net = two_layer_net(dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    net.gradient(rng.random((100, 784)), rng.integers(0, 10, 100))
    assert openblas_threads() == {2}
    assert not POOL.active


@pytest.mark.usefixtures("two_threads")
def test_a_nested_block_keeps_the_outer_ceiling() -> None:
    small, large = operands(100, 100, 50), operands(256, 256, 2 * WORK_PER_THREAD // (256 * 256))
    with sized_products():
        matmul(np, *small)
        with sized_products():
            matmul(np, *large)
            assert openblas_threads() == {2}
        assert POOL.active
    assert not POOL.active and openblas_threads() == {2}


@pytest.mark.parametrize("shape", [(100, 100, 50), (100, 784, 50)])
def test_a_sized_product_computes_the_plain_product_on_as_many_threads(shape: tuple[int, int, int]) -> None:
    a, b, out = operands(*shape)
    with sized_products():
        matmul(np, a, b, out)
        chosen = POOL.current
    assert chosen == min(POOL.ceiling, max(1, shape[0] * shape[1] * shape[2] // WORK_PER_THREAD))
    with threadpool_limits(limits=chosen, user_api="blas"):  # the count sizing chose: same summation order
        np.testing.assert_array_equal(out, np.matmul(a, b))
