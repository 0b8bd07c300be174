"""The train state: everything a step reads and writes, as one pytree.

`step` and `rng` live in the state so that a restored checkpoint continues exactly: the step's
randomness is `fold_in(rng, step)`, never a host-side counter.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """params, batch statistics, optimizer state, step and the run's base RNG key."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    def variables(self) -> dict[str, Any]:
        """The model variables for `model.apply` (batch_stats only where the model has them)."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, example_x: jax.Array
) -> TrainState:
    """Initializes the model on `example_x` (one small batch) and the optimizer."""
    init_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
    variables = model.init({"params": init_rng, "dropout": dropout_rng}, example_x, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=run_rng,
    )
