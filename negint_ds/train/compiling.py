"""``train.compile``: the model through ``torch.compile`` (DeepSpeed's ``engine.compile()``), set up for this project."""
from __future__ import annotations


def eager_rng_in_compiled_graphs() -> None:
    """Make compiled graphs draw random numbers exactly as eager code does for the same seed.

    Inductor otherwise generates dropout masks with its own random stream, so a compiled θ step would not see
    the masks of the eager meta passes (virtual step, probes) seeded identically. This sets inductor's
    ``fallback_random`` (random ops run as the eager ATen kernels; they are then not fused).
    """
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True


def compile_engine(engine, n_langs: int, eager_rng: bool) -> None:
    """``engine.compile()`` with room for one graph per language, train/eval mode and φ passed as leaves.

    Args:
        engine: the DeepSpeed engine.
        n_langs: languages of the model (each is its own graph through the ``lang`` routing argument).
        eager_rng: see :func:`eager_rng_in_compiled_graphs` (meta-learning runs need it).
    """
    import torch._dynamo.config as dynamo_config

    # keep dynamo from falling back to eager when there are many languages
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), 4 * n_langs + 8))
    if eager_rng:
        eager_rng_in_compiled_graphs()
    engine.compile()  # fuses LayerNorm/GELU/dropout/residuals


__all__ = ["compile_engine", "eager_rng_in_compiled_graphs"]
