"""The engine's jitted training step on JAX against a hand-written `jax.jit` step, and NumPy's engine.

Run (unsets the OpenBLAS overrides for this command only; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_xla.py

Contestants, float32, plain SGD (lr 0.01), the same weights and the same pool of 8 batches
(bench_engine_vs_torch.make_batches), interleaved round by round in rotating order:

- `engine_xla`: the engine on `xla:cpu:0`: `Network.stepper`, i.e. `engine.jit_step.CompiledStep`, the
  network's own layers and `SGD` traced into one `jax.jit` step (params donated);
- `jax`: the same model written in JAX's own idiom: a params pytree, `jax.value_and_grad` of a
  `log_softmax` cross-entropy, `jax.tree.map` for SGD, one `jax.jit` with the params donated;
- `engine_numpy`: the engine on `cpu` (`Network.train_step`), NumPy and its BLAS, on the same CPU.

Both JAX steps return their loss; each repetition ends by waiting for the last step's results
(`block_until_ready`), so the clock covers the work and not only its dispatch. XLA's CPU backend
runs its own thread pool over every core, NumPy's BLAS the threads `--threads` gives it (default: all);
the `XLA_FLAGS` of the environment are printed. `paired` is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine_vs_torch import CONFIGS, LR, POOL, engine_network, make_batches

from engine.backend import CPU, resolve_device
from engine.networks import Network, mlp, two_layer_net
from engine.optimizers import SGD

Runner = Callable[[int], Any]


def network_on(widths: list[int], device: Any) -> Network:
    """two_layer_net for 784-50-10, otherwise an mlp with He init (bench_engine_vs_torch's choice)."""
    if widths == [784, 50, 10]:
        return two_layer_net(seed=0, device=device)
    return mlp(widths, init="he", seed=0, device=device)


def engine_xla_runner(widths: list[int], xs: list[np.ndarray], ts: list[np.ndarray]) -> Runner:
    device = resolve_device("xla:cpu:0")
    network = network_on(widths, device)
    step = network.stepper(SGD(LR))
    jxs = [network.xp.asarray(x) for x in xs]
    jts = [network.xp.asarray(t) for t in ts]

    def run(steps: int) -> Any:
        for i in range(steps):
            loss = step(jxs[i % POOL], jts[i % POOL])
        return loss().block_until_ready()

    return run


def jax_runner(widths: list[int], xs: list[np.ndarray], ts: list[np.ndarray]) -> Runner:
    """The same MLP in JAX's idiom, starting from the engine's own initial weights."""
    import jax
    import jax.numpy as jnp

    start = engine_network(widths)
    params = [
        (jnp.asarray(start.params[f"W{k}"]), jnp.asarray(start.params[f"b{k}"]))
        for k in range(1, len(widths))
    ]

    def loss_fn(params: list[tuple[Any, Any]], x: Any, t: Any) -> Any:
        h = x
        for W, b in params[:-1]:
            h = jax.nn.relu(h @ W + b)
        W, b = params[-1]
        logits = h @ W + b
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], axis=1))

    def step(params: list[tuple[Any, Any]], x: Any, t: Any) -> tuple[list[tuple[Any, Any]], Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, t)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss

    step = jax.jit(step, donate_argnums=(0,))
    jxs, jts = [jnp.asarray(x) for x in xs], [jnp.asarray(t) for t in ts]
    state = {"params": params}

    def run(steps: int) -> Any:
        p = state["params"]
        for i in range(steps):
            p, loss = step(p, jxs[i % POOL], jts[i % POOL])
        state["params"] = p
        return loss.block_until_ready()

    return run


def engine_numpy_runner(widths: list[int], xs: list[np.ndarray], ts: list[np.ndarray]) -> Runner:
    network = network_on(widths, CPU)
    optimizer = SGD(LR)

    def run(steps: int) -> None:
        for i in range(steps):
            network.train_step(xs[i % POOL], ts[i % POOL], optimizer)

    return run


RUNNERS = {"engine_xla": engine_xla_runner, "jax": jax_runner, "engine_numpy": engine_numpy_runner}


def measure(name: str, repeats: int, seconds: float, gap: float) -> dict[str, Any]:
    """Interleaved repetitions of every runner, the order rotating each round; samples/s per repetition."""
    widths, batch = CONFIGS[name]
    xs, ts = make_batches(widths, batch)
    runners = {key: make(widths, xs, ts) for key, make in RUNNERS.items()}
    steps: dict[str, int] = {}
    for key, run in runners.items():  # compile and warm up, then size a repetition to about `seconds`
        run(5)
        t0 = time.perf_counter()
        run(5)
        steps[key] = max(5, int(seconds / max((time.perf_counter() - t0) / 5, 1e-7)))
    trials: dict[str, list[float]] = {key: [] for key in runners}
    order = list(runners)
    for r in range(repeats):
        for key in order[r % len(order) :] + order[: r % len(order)]:
            time.sleep(gap)
            t0 = time.perf_counter()
            runners[key](steps[key])
            trials[key].append(steps[key] * batch / (time.perf_counter() - t0))
    med = {key: statistics.median(v) for key, v in trials.items()}
    paired = [e / j for e, j in zip(trials["engine_xla"], trials["jax"], strict=True)]
    return {
        "config": name,
        "widths": widths,
        "batch": batch,
        "steps_per_repetition": steps,
        "samples_per_s": med,
        "trials": trials,
        "engine_xla_vs_jax": med["engine_xla"] / med["jax"],
        "engine_xla_vs_jax_paired": statistics.median(paired),
        "engine_numpy_vs_engine_xla": med["engine_numpy"] / med["engine_xla"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="textbook,large", help=f"comma list of: {', '.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved repetitions per runner")
    parser.add_argument("--seconds", type=float, default=0.4, help="target length of one repetition")
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds before each repetition")
    parser.add_argument("--threads", type=int, default=None, help="NumPy's BLAS threads (default: BLAS's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full results here")
    args = parser.parse_args()
    import jax
    import jaxlib

    print(
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    results = []
    header = (
        "| config | engine on xla samples/s | hand-written jax.jit | engine/jax (paired) | NumPy engine |"
    )
    print(header + "\n|---|---|---|---|---|")
    with threadpool_limits(limits=args.threads):
        for name in args.configs.split(","):
            if name == "convnet":
                raise SystemExit("convnet: the hand-written JAX contestant is fully connected only")
            result = measure(name, args.repeats, args.seconds, args.gap)
            results.append(result)
            med = result["samples_per_s"]
            widths = "-".join(map(str, result["widths"]))
            print(
                f"| {name} {widths}, batch {result['batch']} | {med['engine_xla']:,.0f} | "
                f"{med['jax']:,.0f} | "
                f"{result['engine_xla_vs_jax']:.2f} ({result['engine_xla_vs_jax_paired']:.2f}) | "
                f"{med['engine_numpy']:,.0f} |"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
