"""A saved backbone's graph, rebuilt without its weights, on whichever backend Keras runs (the
caller's module has imported Keras on its own backend first: ``tensorflow_backend`` or
``jax_backend``). The variables are then given the volume's bytes by ``weights.WeightsFile``."""

from __future__ import annotations

from typing import Any

import keras


def model_without_weights(config_json: str) -> keras.Model:
    """The model of ``config_json`` with every variable created but not initialised."""
    with keras.StatelessScope(initialize_variables=False):
        return keras.models.model_from_json(config_json)


def drop_from_uninitialized(variables: list[Any]) -> None:
    """Forget deferred variables that were initialised by hand (Keras keeps a per-thread list)."""
    from keras.src.backend.common import global_state

    ours = {id(v) for v in variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if id(v) not in ours]
    )
