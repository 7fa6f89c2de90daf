"""The experiment spec: a grid of rows × language groups × seeds, with its downstream tasks and analyses.

A spec (YAML/JSON, ``negint_ds/experiments/specs/*.yaml`` or any file of the same form) is loaded like a recipe:
typed dataclasses, unknown keys rejected, every problem (also the cross-checks of :mod:`.plan`: unknown rows,
tasks or languages, a group without data for a task) reported at once, before anything runs.

Two kinds of grid:

* **pairs** (the paper's Tables 2–5): for each ``lg`` of ``pairs``, ``Mono`` trains on lg, ``JointPair`` on lg + en,
  ``JointTri`` on lg + ``tri[lg]`` + en, and the language-specific rows (``+ffn`` …) extend JointPair;
* **scaling** (the curse of multilinguality): for each count N of ``scaling.counts``, ``Joint`` trains on en + the
  first N − 1 languages of ``scaling.pool``, and the language-specific rows extend it; every language gets the
  same amount of training text (``scaling.max_train_sentences``) and the model size stays fixed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from ..config.experiment import LanguageConfig
from ..config.loader import ConfigError, apply_overrides, from_mapping, read_mapping

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")


@dataclass
class FinetuneStage:
    """Downstream evaluation of each pretrained run (``launchers/finetune.py``)."""

    #: A task name of :mod:`negint_ds.tasks.registry`, or ``builtin`` (every built-in task the run's languages
    #: have data for: within-language, zero-shot from en, Bible verse retrieval).
    task: str = "builtin"
    #: ``FinetuneConfig`` overrides (``key=value``), e.g. ``seeds=[1]``.
    set: list[str] = field(default_factory=list)
    #: Rows whose runs are fine-tuned (None: every row).
    rows: Optional[list[str]] = None


@dataclass
class GradConflictStage:
    """Fig. 3: the gradient-conflict probe during pretraining (the recipe's ``analysis.grad_conflict``)."""

    enabled: bool = False
    #: Rows whose runs carry the probe (None: every row with more than one language).
    rows: Optional[list[str]] = None
    every: int = 50
    sequences: int = 128
    #: Sequences per probe micro-batch (None: the training micro-batch, which must then divide ``sequences``).
    micro_batch: Optional[int] = None


@dataclass
class BpcStage:
    """The vocabulary-independent validation metric (PLL bits per character, ``launchers/analyze.py bpc``)."""

    enabled: bool = False
    rows: Optional[list[str]] = None
    max_sentences: int = 100


@dataclass
class MasksStage:
    """Fig. 4a/4b: per-language Hard Concrete masks on the frozen model and their report."""

    enabled: bool = False
    rows: list[str] = field(default_factory=lambda: ["JointPair"])
    #: Groups (lg of a pair) whose runs get masks (None: every pair).
    pairs: Optional[list[str]] = None
    #: Mask seeds (two: the second is the within-language control of Fig. 4a).
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 300


@dataclass
class AnalysesSpec:
    grad_conflict: GradConflictStage = field(default_factory=GradConflictStage)
    bpc: BpcStage = field(default_factory=BpcStage)
    masks: MasksStage = field(default_factory=MasksStage)
    #: Fig. 4c: mean MLM training loss after warm-up, one bar per row, per group (reads the runs' logs).
    warmup_loss: bool = False


@dataclass
class ScalingSpec:
    """Grow the number of languages: en plus the first N − 1 of ``pool``, for each N in ``counts``."""

    counts: list[int]
    #: Languages in the order they are added (en is always in and is not listed).
    pool: list[str]
    #: Training sentences per language (every language, en included), so data per language is fixed.
    max_train_sentences: Optional[int] = None


@dataclass
class CostSpec:
    """Short pretraining runs that measure step time and peak memory against the number of languages."""

    enabled: bool = False
    steps: int = 40
    #: Language counts (None: ``scaling.counts``).
    counts: Optional[list[int]] = None
    #: Rows measured (None: the spec's rows).
    rows: Optional[list[str]] = None
    #: +meta adpt: also measure with ``meta.langs_per_step`` = K for each K here (the full sum is always measured).
    langs_per_step: list[int] = field(default_factory=lambda: [2])


@dataclass
class ClusterSpec:
    """What the SLURM scripts ask for (``--emit_slurm``); the local run ignores it."""

    ds_config: str = "ds_configs/gpu_bf16_zero2.json"
    nodes: int = 1
    gpus_per_node: int = 8
    time: str = "24:00:00"
    partition: Optional[str] = None
    master_port: int = 29500


@dataclass
class ExperimentSpec:
    """A grid of pretraining runs and what is measured on them (see the module docstring)."""

    name: str
    #: The recipe whose model, MLM, train and vocabulary settings every run starts from (its languages are replaced).
    base: str
    rows: list[str]
    description: str = ""
    #: Pretraining seeds (``train.seed``); every (row, group) is pretrained once per seed.
    seeds: list[int] = field(default_factory=lambda: [0])
    #: pairs grid: the languages lg of Mono(lg) / JointPair(lg + en).
    pairs: list[str] = field(default_factory=list)
    #: The rows each pair runs (default: every row), e.g. ``{fr_l: [Mono, JointPair]}`` for Table 5 alone.
    pair_rows: dict[str, list[str]] = field(default_factory=dict)
    #: JointTri: the third language for each lg (Table 4: a language similar to lg).
    tri: dict[str, str] = field(default_factory=dict)
    #: Language entries by id (default ``{source: bible}``), e.g. the subsampled ``fr_l`` of Table 5.
    languages: dict[str, LanguageConfig] = field(default_factory=dict)
    #: Recipe overrides for every run (``key=value``), then per row.
    set: list[str] = field(default_factory=list)
    row_set: dict[str, list[str]] = field(default_factory=dict)
    ds_config: str = "ds_configs/cpu_zero2.json"
    #: Data directories: ``<data_root>/<languages>-<hash of the data section>`` (shared by every spec).
    data_root: str = "data/experiments"
    finetune: Optional[FinetuneStage] = None
    analyses: AnalysesSpec = field(default_factory=AnalysesSpec)
    scaling: Optional[ScalingSpec] = None
    cost: CostSpec = field(default_factory=CostSpec)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    def validate(self) -> list[str]:
        from .rows import GROUP_ROWS, ROWS, SCALING_ROWS

        p = []
        for r in self.rows:
            if r not in ROWS:
                p.append(f"rows: unknown row {r!r}; known: {list(ROWS)}")
        if len(set(self.rows)) != len(self.rows) or not self.rows:
            p.append(f"rows: must be a non-empty list without repeats, got {self.rows}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            p.append(f"seeds: must be a non-empty list without repeats, got {self.seeds}")
        if self.scaling is None:
            if not self.pairs:
                p.append("pairs: required (the languages lg of the pairs grid), or give a scaling section")
            for r in self.rows:
                if r in SCALING_ROWS:
                    p.append(f"rows: {r!r} is the scaling grid's joint row; a pairs grid uses {list(GROUP_ROWS)}")
        else:
            if self.pairs:
                p.append("pairs: a spec is either a pairs grid or a scaling grid; give pairs or scaling, not both")
            for r in self.rows:
                if r in GROUP_ROWS:
                    p.append(f"rows: {r!r} needs a pairs grid; a scaling grid uses {list(SCALING_ROWS)} and the "
                             f"language-specific rows")
            s = self.scaling
            if "en" in s.pool:
                p.append("scaling.pool: en is always in and must not be listed")
            if len(set(s.pool)) != len(s.pool):
                p.append(f"scaling.pool: repeats a language: {s.pool}")
            for n in s.counts:
                if not 2 <= n <= len(s.pool) + 1:
                    p.append(f"scaling.counts: {n} must be between 2 and 1 + len(pool) = {len(s.pool) + 1}")
            if s.max_train_sentences is not None and s.max_train_sentences <= 0:
                p.append(f"scaling.max_train_sentences: must be positive, got {s.max_train_sentences}")
        if "en" in self.pairs:
            p.append("pairs: en is the pivot of every pair; list the other language (pairs: [sw] is sw + en)")
        if len(set(self.pairs)) != len(self.pairs):
            p.append(f"pairs: repeats a language: {self.pairs}")
        for lg, rows in self.pair_rows.items():
            if lg not in self.pairs:
                p.append(f"pair_rows: {lg!r} is not one of pairs {self.pairs}")
            for r in rows:
                if r not in self.rows:
                    p.append(f"pair_rows.{lg}: {r!r} is not one of rows {self.rows}")
        if "JointTri" in self.rows:
            for lg in self.pairs:
                if "JointTri" in self.pair_rows.get(lg, ["JointTri"]) and lg not in self.tri:
                    p.append(f"tri: row JointTri needs a third language for {lg!r} (tri: {{{lg}: <lang>}})")
        for lg, third in self.tri.items():
            if lg not in self.pairs:
                p.append(f"tri: {lg!r} is not one of pairs {self.pairs}")
            if third in ("en", lg):
                p.append(f"tri.{lg}: the third language must differ from {lg} and en, got {third!r}")
        for r in self.row_set:
            if r not in self.rows:
                p.append(f"row_set: {r!r} is not one of rows {self.rows}")
        an = self.analyses
        stages = {"finetune.rows": self.finetune.rows if self.finetune else None,
                  "analyses.grad_conflict.rows": an.grad_conflict.rows if an.grad_conflict.enabled else None,
                  "analyses.bpc.rows": an.bpc.rows if an.bpc.enabled else None,
                  "analyses.masks.rows": an.masks.rows if an.masks.enabled else None,
                  "cost.rows": self.cost.rows if self.cost.enabled else None}
        for where, rows in stages.items():
            for r in rows or []:
                if r not in self.rows:
                    p.append(f"{where}: {r!r} is not one of rows {self.rows}")
        for lg in (an.masks.pairs or []) if an.masks.enabled else []:
            if lg not in self.pairs:
                p.append(f"analyses.masks.pairs: {lg!r} is not one of pairs {self.pairs}")
        if self.cost.enabled and self.scaling is None:
            p.append("cost.enabled: the cost sweep varies the number of languages; it needs a scaling section")
        if self.cost.steps <= 0:
            p.append(f"cost.steps: must be positive, got {self.cost.steps}")
        if any(k < 1 for k in self.cost.langs_per_step):
            p.append(f"cost.langs_per_step: every K must be ≥ 1, got {self.cost.langs_per_step}")
        for name in ("every", "sequences"):
            if getattr(self.analyses.grad_conflict, name) <= 0:
                p.append(f"analyses.grad_conflict.{name}: must be positive")
        if self.analyses.bpc.max_sentences <= 0:
            p.append("analyses.bpc.max_sentences: must be positive")
        if self.cluster.nodes < 1 or self.cluster.gpus_per_node < 1:
            p.append("cluster: nodes and gpus_per_node must be ≥ 1")
        return p


def spec_path(name_or_path: str) -> str:
    """An existing file, or the name of a built-in spec (``negint_ds/experiments/specs/<name>.yaml``).

    Raises:
        ConfigError: neither (the message lists the built-in specs).
    """
    if os.path.isfile(name_or_path):
        return name_or_path
    cand = os.path.join(SPEC_DIR, name_or_path + ".yaml")
    if os.path.isfile(cand):
        return cand
    known = sorted(os.path.splitext(f)[0] for f in os.listdir(SPEC_DIR) if f.endswith(".yaml"))
    raise ConfigError([f"no such file or built-in spec: {name_or_path!r}; built-in specs: {known}"], source="--spec")


def load_spec(name_or_path: str, overrides: list[str] | None = None) -> tuple[ExperimentSpec, str]:
    """Load and type-check a spec (``overrides``: dotted ``key=value``, as ``--set``); returns (spec, its path).

    Raises:
        ConfigError: every unknown key, type error and failed check, naming the file and field.
    """
    path = spec_path(name_or_path)
    data = apply_overrides(read_mapping(path), list(overrides or []))
    return from_mapping(ExperimentSpec, data, source=path, root="spec"), path


__all__ = ["AnalysesSpec", "BpcStage", "ClusterSpec", "CostSpec", "ExperimentSpec", "FinetuneStage",
           "GradConflictStage", "MasksStage", "SPEC_DIR", "ScalingSpec", "load_spec", "spec_path"]
