"""BatchNorm against `torch.nn.BatchNorm1d` in float64: training steps, then evaluation.

The engine's momentum 0.9 is torch's momentum 0.1 (the weight of the new batch); eps is passed to both.
Between training steps gamma and beta take a plain SGD step on both sides, so the comparison covers the
gradients of the parameters and of the input as well as the running statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.backend import Device, as_numpy
from engine.layers import BatchNorm

FEATURES = 5
EPS = 1e-5
LR = 0.1
TOLERANCE = {"rtol": 1e-12, "atol": 1e-13}


def batches(rng: np.random.Generator, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Batches of 2 to 32 samples, off-centre and of uneven spread per feature (like an Affine's output)."""
    scale = np.exp(rng.uniform(-3.0, 3.0, shape[1:]))
    return [rng.normal(2.0, 1.0, (n, *shape[1:])) * scale for n in (32, 2, 7, 16, 3, 32)]


@pytest.mark.parametrize("shape", [(1, FEATURES), (1, 2, 3, 2)], ids=["2d", "4d_flattened_per_position"])
def test_training_steps_then_evaluation_match_torch_batchnorm1d(
    torch: Any, rng: np.random.Generator, shape: tuple[int, ...]
) -> None:
    width = int(np.prod(shape[1:]))
    gamma, beta = rng.uniform(0.5, 1.5, width), rng.normal(0.0, 0.3, width)
    layer = BatchNorm(gamma.copy(), beta.copy(), momentum=0.9, eps=EPS)
    reference = torch.nn.BatchNorm1d(width, eps=EPS, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(gamma))
        reference.bias.copy_(torch.from_numpy(beta))

    for x in batches(rng, shape):
        dout = rng.standard_normal(x.shape)
        out = layer.forward(x, train=True)
        dx = layer.backward(dout)

        reference.train()
        x_ref = torch.from_numpy(x.reshape(len(x), -1)).requires_grad_(True)
        out_ref = reference(x_ref)
        out_ref.backward(torch.from_numpy(dout.reshape(len(x), -1)))
        np.testing.assert_allclose(out.reshape(len(x), -1), out_ref.detach().numpy(), **TOLERANCE)
        np.testing.assert_allclose(dx.reshape(len(x), -1), x_ref.grad.numpy(), **TOLERANCE)
        np.testing.assert_allclose(layer.dgamma, reference.weight.grad.numpy(), **TOLERANCE)
        np.testing.assert_allclose(layer.dbeta, reference.bias.grad.numpy(), **TOLERANCE)

        layer.gamma -= LR * layer.dgamma
        layer.beta -= LR * layer.dbeta
        with torch.no_grad():
            reference.weight -= LR * reference.weight.grad
            reference.bias -= LR * reference.bias.grad
            reference.weight.grad = None
            reference.bias.grad = None

    np.testing.assert_allclose(layer.running_mean, reference.running_mean.numpy(), **TOLERANCE)
    np.testing.assert_allclose(layer.running_var, reference.running_var.numpy(), **TOLERANCE)
    reference.eval()
    x_eval = batches(rng, shape)[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(x_eval.reshape(len(x_eval), -1))).numpy()
    np.testing.assert_allclose(
        layer.forward(x_eval, train=False).reshape(len(x_eval), -1), expected, **TOLERANCE
    )


def test_a_fresh_batchnorm_evaluates_at_unit_scale_not_a_thousand_times_it() -> None:
    layer = BatchNorm(np.ones(3), np.zeros(3))  # eps 1e-6: a running variance of 0 would divide by 1e-3
    x = np.array([[0.5, -2.0, 3.0]])
    np.testing.assert_allclose(layer.forward(x, train=False), x / np.sqrt(1 + 1e-6), rtol=1e-15)
    np.testing.assert_array_equal(layer.running_var, [1.0, 1.0, 1.0])


def test_one_training_step_leaves_evaluation_near_the_training_scale(rng: np.random.Generator) -> None:
    layer = BatchNorm(np.ones(4), np.zeros(4))
    x = rng.normal(0.0, 1.0, (64, 4))
    trained = layer.forward(x, train=True).copy()
    evaluated = layer.forward(x, train=False)
    # running var 0.9 + 0.1 * ~1 and mean 0.1 * ~0: evaluation within a few percent of training
    np.testing.assert_allclose(evaluated.std(axis=0), trained.std(axis=0), rtol=0.1)


def test_a_batch_of_one_moves_the_running_mean_only() -> None:
    layer = BatchNorm(np.ones(2), np.zeros(2))
    out = layer.forward(np.array([[4.0, -6.0]]), train=True)
    np.testing.assert_array_equal(out, [[0.0, 0.0]])  # nothing to normalise against but itself
    np.testing.assert_allclose(layer.running_mean, [0.4, -0.6])
    np.testing.assert_array_equal(layer.running_var, [1.0, 1.0])


@pytest.mark.gpu
def test_batchnorm_on_the_gpu_keeps_the_cpu_running_statistics(gpu: Device, rng: np.random.Generator) -> None:
    gamma, beta = rng.uniform(0.5, 1.5, FEATURES), rng.normal(0.0, 0.3, FEATURES)
    layers = [BatchNorm(xp.asarray(gamma), xp.asarray(beta), eps=EPS) for xp in (np, gpu.xp)]
    train, x_eval = batches(rng, (1, FEATURES)), batches(rng, (1, FEATURES))[0]
    for x in train:
        for layer, xp in zip(layers, (np, gpu.xp), strict=True):
            layer.forward(xp.asarray(x), train=True)
    cpu, on_gpu = layers
    np.testing.assert_allclose(as_numpy(on_gpu.running_mean), cpu.running_mean, **TOLERANCE)
    np.testing.assert_allclose(as_numpy(on_gpu.running_var), cpu.running_var, **TOLERANCE)
    evaluated = as_numpy(on_gpu.forward(gpu.xp.asarray(x_eval), train=False))
    np.testing.assert_allclose(evaluated, cpu.forward(x_eval, train=False), **TOLERANCE)
