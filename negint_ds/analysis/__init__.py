"""Analyses of negative interference (Wang et al. 2020, §3.1 and §3.3; Figures 3 and 4).

* :mod:`.grad_conflict` — cosine similarity of per-language θ gradients during pretraining (Fig. 3), as a
  trainer callback and offline over saved checkpoints.
* :mod:`.hard_concrete`, :mod:`.masks`, :mod:`.mask_similarity` — per-language L0 (Hard Concrete) masks on
  a frozen model and their similarity per layer (Fig. 4a/4b, Eq. 1).
* :mod:`.warmup_loss` — average MLM training loss per language after warm-up (Fig. 4c).
* :mod:`.pll` — a vocabulary-independent validation metric (pseudo-log-likelihood bits per character).
* :mod:`.pretrained` — loading a pretrained run directory for all of the above.

Entry point: ``launchers/analyze.py``.
"""
