"""Where a per-language L0 mask run (:mod:`.masks`) keeps its files, without importing torch.

``<out_dir>/<lang>_seed<seed>/`` holds ``log_alpha.safetensors`` (the Hard Concrete location parameters log α of
every gate group) and ``summary.json``, written last, so its presence marks a finished run. The experiment runner
(:mod:`negint_ds.experiments.plan`) uses these names as the masks stage's completion markers. The mask report
(:func:`.mask_similarity.write_mask_report`) writes :data:`SIMILARITY_PNG` and its CSV beside it
(:data:`SIMILARITY_CSV`), which the mask_report stage and the experiment report read.
"""
from __future__ import annotations

import os

LOG_ALPHA_FILE, SUMMARY_FILE = "log_alpha.safetensors", "summary.json"
SIMILARITY_PNG, SIMILARITY_CSV = "mask_similarity.png", "mask_similarity.csv"


def mask_run_dir(out_dir: str, lang: str, seed: int) -> str:
    """``out_dir/<lang>_seed<seed>``: where :func:`.masks.train_language_mask` writes language ``lang``'s masks
    for noise/initialisation seed ``seed``."""
    return os.path.join(out_dir, f"{lang}_seed{seed}")


__all__ = ["LOG_ALPHA_FILE", "SIMILARITY_CSV", "SIMILARITY_PNG", "SUMMARY_FILE", "mask_run_dir"]
