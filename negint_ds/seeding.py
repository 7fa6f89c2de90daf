"""Counter-based seeds: every random choice is a pure function of (run seed, purpose, step, ...).

This is what makes a resumed run identical to an uninterrupted one, and a 2-process run identical to a
1-process run with the same global batch, without checkpointing any RNG state.
"""
from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' ``str()`` (e.g. ``derive_seed(seed, "mask", step, micro_index)``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
