"""The engine's convnet computes PyTorch's loss and gradients for the same weights (float64).

PyTorch is a dev dependency (the `dev` extra pins it), so these tests run wherever the suite runs; an
environment without it (the copy of an accelerator host's that tests/deploy/test_device_environment.py builds)
skips the module instead of failing its collection.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.layers import Pooling
from engine.networks import Network, simple_convnet
from tests.engine.conftest import randomize_params
from tests.support.servers import CI

try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # as the `torch` fixture: a skip, a failure under CI=true
    if CI:
        raise
    pytest.skip(f"PyTorch is needed as the reference implementation: {exc}", allow_module_level=True)


def torch_convnet_loss(
    net: Network, x: np.ndarray, t: np.ndarray, stride: int, pad: int
) -> tuple[float, dict[str, np.ndarray]]:
    """Conv -> ReLU -> MaxPool 2x2/2 -> Linear -> ReLU -> Linear -> cross-entropy, with the net's weights."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in net.params.items()}
    h = F.relu(F.conv2d(torch.tensor(x), p["W1"], p["b1"], stride=stride, padding=pad))
    h = F.max_pool2d(h, 2, 2).flatten(1)
    h = F.relu(h @ p["W2"] + p["b2"])
    loss = F.cross_entropy(h @ p["W3"] + p["b3"], torch.tensor(t))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in p.items() if v.grad is not None}


@pytest.mark.parametrize(("stride", "pad", "size"), [(1, 0, 28), (1, 2, 13), (2, 1, 15)])
def test_simple_convnet_loss_and_gradients_equal_torch_autograd(
    stride: int, pad: int, size: int, rng: np.random.Generator
) -> None:
    net = simple_convnet(
        (1, size, size), filter_num=6, stride=stride, pad=pad, hidden_size=20, dtype="float64", seed=3
    )
    randomize_params(net, rng)
    x, t = rng.standard_normal((5, 1, size, size)), rng.integers(0, 10, 5)
    grads = net.gradient(x, t)
    loss, expected = torch_convnet_loss(net, x, t, stride, pad)
    assert net.last_loss == pytest.approx(loss, rel=1e-12)
    assert set(expected) == set(grads)
    for key, value in expected.items():
        scale = float(np.abs(value).max())
        np.testing.assert_allclose(grads[key], value, rtol=1e-10, atol=1e-10 * scale, err_msg=key)


@pytest.mark.parametrize(("kernel", "stride", "pad"), [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 1)])
def test_pooling_forward_and_backward_equal_torch_max_pool2d(
    kernel: int, stride: int, pad: int, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 3, 9, 7))
    layer = Pooling(kernel, kernel, stride=stride, pad=pad)
    out = layer.forward(x).copy()
    dout = rng.standard_normal(out.shape)
    x_t = torch.tensor(x, requires_grad=True)
    out_t = F.max_pool2d(x_t, kernel, stride, padding=pad)
    out_t.backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    assert x_t.grad is not None
    np.testing.assert_allclose(layer.backward(dout), x_t.grad.numpy(), rtol=1e-14, atol=1e-15)
