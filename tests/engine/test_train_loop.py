"""The training loop's steps: batches gathered before a window, losses computed after it, same numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.backend import take_rows
from engine.kinds import train
from engine.kinds.train import TrainingLoop
from engine.layers import SoftmaxWithLoss
from engine.spec import resolve_spec

TIMING = {"warmup": 3, "window": 4, "min_repeats": 2, "max_repeats": 3, "target_cv": 0.5}


class Silent:
    """A reporter that says nothing and never stops."""

    def report(self, fraction: float, message: str, force: bool = False) -> None:
        pass

    def check_stop(self, where: str) -> None:
        pass


def _spec(**fields: Any) -> dict[str, Any]:
    model = {"name": "mlp", "layers": [64, 30, 10]}
    base = {"kind": "train", "dataset": "digits", "model": model, "steps": 23, "batch_size": 16}
    return resolve_spec({**base, "loss_samples": 23, "timing": TIMING, **fields})


def test_take_rows_writes_the_rows_of_the_indices_into_out() -> None:
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    indices = np.array([[9, 0, 3], [3, 3, 1]])
    out = np.full((2, 3, 4), -1.0, dtype=np.float32)
    assert take_rows(a, indices, out=out) is out
    np.testing.assert_array_equal(out, a[indices])


def test_a_pending_loss_keeps_its_step_s_value_after_later_forwards() -> None:
    rng = np.random.default_rng(5)
    layer = SoftmaxWithLoss()
    for labels in (rng.integers(0, 7, size=12), np.eye(7)[rng.integers(0, 7, size=12)]):
        first_scores, later_scores = rng.normal(size=(12, 7)), rng.normal(size=(12, 7)) * 3
        t = labels.copy()
        layer.forward(first_scores, t, compute_loss=False)
        pending = layer.pending_loss()
        expected = float(SoftmaxWithLoss().forward(first_scores, labels))
        t[...] = labels[::-1]  # the labels' buffer reused by the next step
        layer.forward(later_scores, t, compute_loss=False)
        assert float(pending()) == expected
        assert float(layer.loss) == float(SoftmaxWithLoss().forward(later_scores, labels[::-1]))


def _plain_losses(spec: dict[str, Any]) -> list[float]:
    """The loop before buffers: each step's batch by fancy indexing, its loss read at once."""
    loop = TrainingLoop(spec, Silent())
    losses: list[float] = []
    for chunk, _ in loop.chunks():
        indices = loop.batch_rng.integers(0, loop.data.n_train, size=(chunk, loop.batch_size))
        for batch in indices:
            loop.network.train_step(loop.x_train[batch], loop.t_train[batch], loop.optimizer)
            losses.append(float(loop.network.last_layer.loss))
        loop.done += chunk
    return losses


def test_the_job_s_losses_equal_a_plain_loop_s_on_dense_and_convolutional_nets() -> None:
    dense = _spec(model={"name": "mlp", "layers": [64, 30, 30, 10], "batchnorm": True, "dropout": 0.2})
    convnet = _spec(model={"name": "simple_convnet", "layers": [64, 20, 10]}, steps=9, loss_samples=9)
    for spec in (dense, convnet):
        curve = TrainingLoop(spec, Silent()).run()["metrics"]["loss_curve"]
        assert [value for _, value in curve] == _plain_losses(spec)
        assert [step for step, _ in curve] == list(range(1, spec["steps"] + 1))


def test_the_gather_is_timed_apart_from_the_windows() -> None:
    result = TrainingLoop(_spec(), Silent()).run()
    gather, train_time = result["timing"]["gather_time_s"], result["metrics"]["train_time_s"]
    assert 0 < gather < train_time


def test_the_memory_estimate_counts_a_window_of_gathered_batches() -> None:
    spec = _spec(batch_size=50, dtype="float64")
    estimate = train.estimate_memory(spec)
    assert estimate.parts["batches"] == 4 * 50 * (64 * 8 + 8)  # window x batch x (features + int64 label)
