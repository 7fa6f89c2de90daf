"""The experiment config: data, model, MLM objective and training schedule, as typed dataclasses.

A recipe YAML (``negint_ds/recipes/*.yaml``) is an :class:`ExperimentConfig`. DeepSpeed's own JSON
(``ds_configs/``) owns batch sizes, optimizer, precision and ZeRO stage; see
:mod:`negint_ds.config.deepspeed`.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..data.sources.catalog import BIBLE_ALL_TRANSLATIONS, BIBLE_TRANSLATIONS, WIKI_MEMBERS
from ..languages import is_language_code
from .loader import ConfigError, apply_overrides, from_mapping, read_mapping, to_mapping

_LANG_ID = re.compile(r"^[a-z]{2}(_[a-z0-9]+)?$")


def _positive(obj, *names: str) -> list[str]:
    """A problem for each field of ``obj`` in ``names`` that is not > 0."""
    return [f"{n}: must be positive, got {getattr(obj, n)}" for n in names if getattr(obj, n) <= 0]


def _positive_or_null(obj, *names: str) -> list[str]:
    """A problem for each optional field of ``obj`` in ``names`` that is set and not > 0."""
    return [f"{n}: must be positive or null, got {getattr(obj, n)}" for n in names
            if getattr(obj, n) is not None and getattr(obj, n) <= 0]


@dataclass
class LanguageConfig:
    """Where one language's text comes from. The mapping key is the language *id* used in the run.

    The id is an ISO 639-1 code, optionally with a suffix for variants such as the paper's
    low-resource ``fr_l`` (``lang`` defaults to the part before ``_``).
    """

    source: Literal["bible", "wiki", "text", "hf"]
    lang: Optional[str] = None
    #: ``text``: path of a UTF-8 file, one sentence or paragraph per line.
    path: Optional[str] = None
    #: ``bible``: bbName of a translation (default: :data:`BIBLE_TRANSLATIONS` [lang]).
    translation: Optional[str] = None
    #: ``hf``: dataset name or builder for ``datasets.load_dataset`` (``json``, ``text``, ``parquet``,
    #: or a hub name such as ``wikimedia/wikipedia`` when online or cached).
    dataset: Optional[str] = None
    hf_config: Optional[str] = None
    data_files: Optional[list[str]] = None
    hf_split: str = "train"
    text_field: str = "text"
    #: Read at most this many documents from the source (before cleaning); None = all.
    max_documents: Optional[int] = None
    #: Subsample the *train* split to this many sentences (the paper's low-resource fr_l / ru_l).
    max_train_sentences: Optional[int] = None

    def validate(self) -> list[str]:
        p = []
        if self.lang is not None and not is_language_code(self.lang):
            p.append(f"lang: unknown language code {self.lang!r} (expected ISO 639-1, e.g. 'sw')")
        if self.source == "text" and not self.path:
            p.append("path: required for source 'text' (one sentence or paragraph per line)")
        if self.source == "hf" and not self.dataset:
            p.append("dataset: required for source 'hf' (e.g. 'json' with data_files, or a hub name)")
        if self.source == "bible" and self.translation is not None and self.translation not in BIBLE_ALL_TRANSLATIONS:
            p.append(f"translation: unknown bible translation {self.translation!r}; "
                     f"known: {sorted(BIBLE_ALL_TRANSLATIONS)}")
        for name in ("max_documents", "max_train_sentences"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                p.append(f"{name}: must be positive, got {v}")
        return p


@dataclass
class CleaningConfig:
    """Line cleaning applied before splitting (character counts after normalisation)."""

    normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    min_chars: int = 1
    max_chars: int = 5000
    dedupe: bool = True

    def validate(self) -> list[str]:
        if not 1 <= self.min_chars <= self.max_chars:
            return [f"min_chars/max_chars: need 1 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}"]
        return []


@dataclass
class SplitConfig:
    """Deterministic train/valid/test split by hashing each unit's key (verse id, article, line)."""

    valid_fraction: float = 0.02
    test_fraction: float = 0.02
    salt: str = "negint_ds"
    #: What a unit's split is keyed by, for ``text`` and ``hf`` sources: ``text`` (the cleaned text),
    #: ``line`` (the line/row number, so line k of every language lands in the same split: aligned
    #: parallel text), or the name of a field of each hf/JSONL record (e.g. a verse id). Built-in
    #: corpora always key by their own unit id (Bible verse, Wikipedia article).
    key: str = "text"

    def validate(self) -> list[str]:
        if not self.key.strip():
            return ["key: must be 'text', 'line' or a field name, got an empty string"]
        if not (0 < self.valid_fraction and 0 <= self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            return [f"valid_fraction/test_fraction: need 0 < valid, 0 <= test, valid + test < 1; "
                    f"got {self.valid_fraction}, {self.test_fraction}"]
        return []


@dataclass
class VocabConfig:
    """Shared SentencePiece vocabulary trained on a temperature-sampled mix of the languages."""

    size: int = 32000
    model_type: Literal["bpe", "unigram"] = "bpe"
    #: T in P_i ∝ (n_i/Σn)^(1/T) for the vocabulary training mix (XLM: exponent 0.5, i.e. T = 2).
    temperature: float = 2.0
    #: Sentences in the mix fed to SentencePiece.
    sample_sentences: int = 1_000_000
    character_coverage: float = 0.9995
    seed: int = 0

    def validate(self) -> list[str]:
        p = []
        if self.size < 100:
            p.append(f"size: vocabulary of {self.size} is too small (need >= 100)")
        if self.size > 2**31 - 1:
            p.append(f"size: {self.size} does not fit int32 token ids")
        if self.temperature <= 0:
            p.append(f"temperature: must be > 0, got {self.temperature}")
        if self.sample_sentences <= 0:
            p.append(f"sample_sentences: must be positive, got {self.sample_sentences}")
        return p


@dataclass
class DataConfig:
    """Corpus, cleaning, split and vocabulary; ``python -m negint_ds.prepare`` writes ``dir``."""

    dir: str
    languages: dict[str, LanguageConfig]
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    #: Cache for the built-in corpora's wheels (default: $NEGINT_DS_CACHE or ~/.cache/negint_ds).
    cache_dir: Optional[str] = None

    def validate(self) -> list[str]:
        p = []
        if not self.languages:
            p.append("languages: at least one language is required")
        for key, lc in self.languages.items():
            if not _LANG_ID.match(key):
                p.append(f"languages.{key}: language id must look like 'sw' or 'fr_l'")
                continue
            code = lc.lang or key.split("_")[0]
            if not is_language_code(code):
                p.append(f"languages.{key}: unknown language code {code!r} (expected ISO 639-1, e.g. 'sw'); "
                         f"set 'lang:' for a custom id")
            elif lc.source == "bible" and lc.translation is None and code not in BIBLE_TRANSLATIONS:
                p.append(f"languages.{key}: the built-in bible corpus has no {code!r}; "
                         f"available: {sorted(BIBLE_TRANSLATIONS)}")
            elif lc.source == "wiki" and code not in WIKI_MEMBERS:
                p.append(f"languages.{key}: the built-in wiki corpus has no {code!r}; available: {sorted(WIKI_MEMBERS)}")
        return p

    def lang_code(self, lang_id: str) -> str:
        """ISO 639-1 code of a language id (``'fr_l' -> 'fr'`` unless ``lang`` is set)."""
        lc = self.languages[lang_id]
        return lc.lang or lang_id.split("_")[0]


@dataclass
class AdapterConfig:
    """Residual bottleneck adapters (paper Appendix B): after the attention and/or FFN sublayer of every layer.

    ``kind``: ``none``; ``language`` (one per language: φ, the paper's +adpt and +meta adpt rows); or
    ``shared`` (one for all languages, part of θ: the +share adpt row).
    """

    kind: Literal["none", "language", "shared"] = "none"
    placement: list[Literal["attn", "ffn"]] = field(default_factory=lambda: ["attn", "ffn"])
    #: Bottleneck width b (None: d/4, the paper's 128 at d=512).
    bottleneck: Optional[int] = None
    activation: Literal["gelu", "relu"] = "gelu"
    #: Dropout on the adapter branch: 0 as the paper's formula (and the fused kernel); null = model.dropout,
    #: as the official code's TransformerFFN-based adapters.
    dropout: Optional[float] = 0.0

    def validate(self) -> list[str]:
        p = []
        if not self.placement or len(set(self.placement)) != len(self.placement):
            p.append(f"placement: a non-empty list of distinct 'attn'/'ffn', got {self.placement}")
        if self.bottleneck is not None and self.bottleneck <= 0:
            p.append(f"bottleneck: must be positive, got {self.bottleneck}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            p.append(f"dropout: must be in [0, 1), got {self.dropout}")
        return p


@dataclass
class ModelConfig:
    """XLM-style Transformer encoder (paper: 8 layers, d=512, FFN 2048, vocab 32k).

    The paper states 12 attention heads, which does not divide d=512; we default to 8 (head size 64).
    """

    layers: int = 8
    dim: int = 512
    heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: Literal["gelu", "relu"] = "gelu"
    max_positions: int = 512
    lang_embeddings: bool = True
    #: None: taken from the prepared vocabulary. If set, it must equal the vocabulary's size.
    vocab_size: Optional[int] = None
    #: Sublayers that exist once per language (φ): any of ``ln``, ``ffn``, ``attn`` (paper: +ffn, +attn).
    language_specific: list[Literal["ln", "ffn", "attn"]] = field(default_factory=list)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)

    def validate(self) -> list[str]:
        p = _positive(self, "layers", "dim", "heads", "ffn_dim", "max_positions")
        if self.heads > 0 and self.dim % self.heads:
            p.append(f"heads: {self.heads} heads do not divide dim={self.dim}")
        for name in ("dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                p.append(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if len(set(self.language_specific)) != len(self.language_specific):
            p.append(f"language_specific: repeated entries in {self.language_specific}")
        return p

    @property
    def has_language_specific(self) -> bool:
        """True when the model has φ parameters (per-language sublayers or language adapters)."""
        return bool(self.language_specific) or self.adapters.kind == "language"


@dataclass
class MLMConfig:
    """XLM masked LM: ``mask_prob`` of tokens are predicted; of those 80% → <mask>, 10% random, 10% kept."""

    mask_prob: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    keep_frac: float = 0.1

    def validate(self) -> list[str]:
        p = []
        if not 0 < self.mask_prob < 1:
            p.append(f"mask_prob: must be in (0, 1), got {self.mask_prob}")
        fr = (self.mask_frac, self.random_frac, self.keep_frac)
        if min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            p.append(f"mask_frac/random_frac/keep_frac: must be >= 0 and sum to 1, got {fr}")
        return p


@dataclass
class NonFiniteConfig:
    """What a run does when training stops producing finite numbers (a diverged run, lr far too high)."""

    #: Stop after this many consecutive optimiser steps whose loss is non-finite or whose update was
    #: skipped for overflow (fp16 steps during the loss scaler's warm-up, while it is still halving its
    #: initial scale, do not count: DeepSpeed's scaler expects those).
    max_consecutive_skips: int = 20
    #: ``stop``: a named error, a non-zero exit, no export; the last finite checkpoint stays in charge.
    #: ``warn``: log each one and carry on (nothing non-finite is still ever exported or checkpointed).
    action: Literal["stop", "warn"] = "stop"

    def validate(self) -> list[str]:
        if self.max_consecutive_skips < 1:
            return [f"max_consecutive_skips: must be >= 1, got {self.max_consecutive_skips}"]
        return []


@dataclass
class TrainConfig:
    """Steps, language sampling, schedule and the run's logging/eval/checkpoint intervals."""

    max_steps: int = 100_000
    seq_len: int = 256
    #: T in P_i ∝ (n_i/Σn)^(1/T) (XLM's exponent 0.7 is T ≈ 1.43); one language per step.
    lang_temperature: float = 1.43
    #: XLM ``adam_inverse_sqrt``: linear warm-up from ``warmup_init_lr`` over ``warmup_steps`` then
    #: lr·sqrt(warmup/step). Used unless the DeepSpeed config has its own ``scheduler`` section.
    warmup_steps: int = 30000
    warmup_init_lr: float = 1e-7
    seed: int = 0
    log_every: int = 10
    eval_every: int = 1000
    save_every: int = 5000
    #: Checkpoints kept on disk besides the newest (older ones are deleted after a successful save).
    keep_checkpoints: int = 2
    #: Validation windows per language (None = the whole valid split).
    eval_sequences: Optional[int] = 512
    eval_batch_size: int = 32
    #: Warn when a language's validation set has fewer masked (predicted) tokens than this: its
    #: perplexity is then too noisy to compare (the report gives a 95% interval either way).
    min_eval_tokens: int = 2000
    #: Policy for non-finite losses and skipped (overflowed) steps.
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    #: ``torch.compile`` the model through DeepSpeed's ``engine.compile()`` (GPU; slow to compile on CPU).
    compile: bool = False

    def validate(self) -> list[str]:
        p = _positive(self, "max_steps", "seq_len", "log_every", "eval_every", "save_every", "eval_batch_size")
        if self.seq_len < 4:
            p.append(f"seq_len: must be at least 4, got {self.seq_len}")
        if self.lang_temperature <= 0:
            p.append(f"lang_temperature: must be > 0, got {self.lang_temperature}")
        if self.warmup_steps < 0:
            p.append(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.keep_checkpoints < 0:
            p.append(f"keep_checkpoints: must be >= 0, got {self.keep_checkpoints}")
        if self.min_eval_tokens < 0:
            p.append(f"min_eval_tokens: must be >= 0, got {self.min_eval_tokens}")
        p += _positive_or_null(self, "eval_sequences")
        return p


@dataclass
class MetaConfig:
    """Meta-learned language adapters (+meta adpt; paper §4.1, Algorithm 1). φ = the language adapters.

    Defaults follow the paper and, where it is silent, the official code (iedwardwangi/MetaAdapter):
    L_val on the valid split (``meta_use_valid_set=True``), language i included in the validation sum
    (``only_valid_other_langs=False``), validation batches of 64 sequences (``valid_max_batch_size``),
    β = the current learning rate (``use_current_lr=True``). Where the official code departs from
    Algorithm 1 we follow the paper by default and offer the code's behaviour as options (the recipe
    ``jointpair_en_sw_meta_adpt_official`` sets them all): the code updates θ first and then φ at
    θ^(t+1) (``order: theta_first``) on a freshly drawn train batch (``phi_batch: fresh``), differentiates
    through θ' exactly (``hypergradient: exact``; Eq. 8's finite differences are the paper's default),
    and its default optimizer also applies the train-loss gradient to the adapters
    (``phi_train_loss: true``).
    """

    enabled: bool = False
    hypergradient: Literal["finite_difference", "exact"] = "finite_difference"
    #: c in ε = c/‖v‖ (DARTS: 0.01). In bf16/fp16 a small εv can vanish in rounding: the run logs the share
    #: of θ that the perturbation changes (``fd_changed_fraction``); raise c if it is small.
    fd_scale: float = 0.01
    #: β of the virtual step θ' = θ − β∇θ L_train (None: the current learning rate).
    beta: Optional[float] = None
    #: α, the φ learning rate (None: the current learning rate; φ uses AdamW with DeepSpeed's betas/eps/decay).
    alpha: Optional[float] = None
    val_source: Literal["valid", "train"] = "valid"
    include_self: bool = True
    #: Global sequences per language in the validation sum at each meta step.
    val_batch_size: int = 64
    #: Sequences per validation micro-batch (None: gcd(train micro-batch, val_batch_size / world size)).
    val_micro_batch: Optional[int] = None
    #: Use a uniform random subset of K languages in the validation sum (unbiased); None: all.
    langs_per_step: Optional[int] = None
    #: Meta (φ) update every k steps; θ steps every step.
    every: int = 1
    #: Also step φ_i with the train-loss gradient during the θ step (official code's default behaviour).
    phi_train_loss: bool = False
    #: Precision of the meta step's passes. ``fp32``: θ (DeepSpeed's fp32 master weights under ZeRO 1–2, else
    #: an fp32 copy of the module) and φ (its fp32 masters) in fp32; θ', θ± formed in fp32 and the virtual
    #: step, validation pass and probes run with fp32 parameters, whatever the training precision (TF32
    #: matmuls off). ``working``: the module's own dtype (bf16/fp16 on GPU) — cheaper, but there the
    #: second-order term is mostly rounding noise (README: "Precision of the meta step").
    precision: Literal["fp32", "working"] = "fp32"
    #: Finite-difference scheme for Eq. 8: ``central`` (g⁺ − g⁻)/2ε, error O(ε²), two probes; ``forward``
    #: (g⁺ − g)/ε, error O(ε), one probe (g = ∇φ L_train^i at θ comes from the virtual step's backward).
    fd_scheme: Literal["central", "forward"] = "central"
    #: ``phi_first``: Algorithm 1 (φ_i step at θ^(t), then θ on L_train(θ, φ^(t+1))); ``theta_first``: the
    #: official code (θ step with φ^(t), then the φ_i step at θ^(t+1)).
    order: Literal["phi_first", "theta_first"] = "phi_first"
    #: Train batch of the φ step's virtual step and probes: ``same`` as the θ step's (Algorithm 1), or a
    #: ``fresh`` batch of language i drawn for it (official code).
    phi_batch: Literal["same", "fresh"] = "same"
    #: φ's optimiser in the meta step: ``adamw`` (DeepSpeed's betas/eps/decay; official code) or ``sgd``
    #: (φ_i ← φ_i − α ∇φ_i F, Eq. 3 literally).
    phi_optimizer: Literal["adamw", "sgd"] = "adamw"
    #: Draw every dropout mask explicitly (fp32 uniforms from the seeded RNG; attention with dropout on the math
    #: formula) so the virtual step, the probes and the θ step see identical masks on every backend and dtype.
    #: false keeps PyTorch's fused kernels (faster attention on GPU; the masks then differ between kernels).
    explicit_dropout: bool = True

    def validate(self) -> list[str]:
        p = []
        if self.fd_scale <= 0:
            p.append(f"fd_scale: must be > 0, got {self.fd_scale}")
        for name in ("beta", "alpha"):
            v = getattr(self, name)
            if v is not None and v < 0:
                p.append(f"{name}: must be >= 0, got {v}")
        p += _positive(self, "val_batch_size", "every") + _positive_or_null(self, "val_micro_batch", "langs_per_step")
        if self.fd_scheme != "central" and self.hypergradient != "finite_difference":
            p.append(f"fd_scheme: {self.fd_scheme!r} applies to hypergradient=finite_difference, not "
                     f"{self.hypergradient!r}")
        return p


@dataclass
class GradConflictConfig:
    """Gradient conflict during pretraining (paper §3.1 "Gradient Conflict", Figure 3; README "Analyses").

    Every ``every`` steps the trainer takes, for each language, the fp32 gradient of the MLM loss with respect
    to the shared parameters θ over an effective batch of ``sequences`` windows (built by accumulating
    micro-batches of ``micro_batch``), plus a second, independently drawn batch for each control language (the
    paper's "En–En"), and logs the cosine similarity of every pair to ``analysis/grad_conflict.csv``. Its
    batches come from their own RNG stream and it leaves no gradients behind: training is bit-identical
    with it on or off.
    """

    enabled: bool = False
    #: Probe every k optimiser steps (paper: 10), and at step 0.
    every: int = 10
    #: Sequences (train windows of ``train.seq_len`` tokens) per gradient (paper: 4,096 sentences).
    sequences: int = 4096
    #: Sequences per forward/backward of the probe (None: the training micro-batch).
    micro_batch: Optional[int] = None
    #: Languages that get a second independent batch as the same-language control (None: every language).
    controls: Optional[list[str]] = None
    #: Dropout in the probe's forwards. false (default): the gradient of the loss itself, not of one dropout
    #: draw, so the cosine measures the languages, not dropout noise.
    dropout: bool = False

    def validate(self) -> list[str]:
        return _positive(self, "every", "sequences") + _positive_or_null(self, "micro_batch")


@dataclass
class AnalysisConfig:
    """Analyses that run during pretraining (the others run on a finished run: ``launchers/analyze.py``)."""

    grad_conflict: GradConflictConfig = field(default_factory=GradConflictConfig)


@dataclass
class ExperimentConfig:
    """A whole experiment: one recipe file."""

    name: str
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    mlm: MLMConfig = field(default_factory=MLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    description: str = ""
    #: A recipe (name or path) this one is merged onto; resolved by :func:`load_experiment`.
    extends: Optional[str] = None

    def validate(self) -> list[str]:
        p = []
        if self.train.seq_len > self.model.max_positions:
            p.append(f"train.seq_len: {self.train.seq_len} exceeds model.max_positions={self.model.max_positions}")
        if self.meta.enabled:
            if self.model.adapters.kind != "language":
                p.append("meta.enabled: needs model.adapters.kind=language (φ = the language adapters, +meta adpt)")
            if self.model.language_specific:
                p.append(f"meta.enabled: model.language_specific={self.model.language_specific} is not supported with "
                         f"meta-learning (the paper meta-learns adapters only)")
            if not self.meta.include_self and len(self.data.languages) < 2:
                p.append("meta.include_self: false needs at least two languages")
        gc = self.analysis.grad_conflict
        for lang in gc.controls or []:
            if lang not in self.data.languages:
                p.append(f"analysis.grad_conflict.controls: {lang!r} is not one of data.languages "
                         f"{list(self.data.languages)}")
        if gc.enabled and gc.micro_batch is not None and gc.sequences % gc.micro_batch:
            p.append(f"analysis.grad_conflict.sequences={gc.sequences} must be a multiple of micro_batch="
                     f"{gc.micro_batch}")
        return p

    @property
    def lang_ids(self) -> list[str]:
        """Language ids in config order; index = language embedding id."""
        return list(self.data.languages)


def recipe_path(name_or_path: str) -> str:
    """Resolve a recipe: an existing file path, or the name of a built-in recipe in ``negint_ds/recipes``.

    Raises:
        ConfigError: neither a file nor a built-in recipe name (the message lists the built-ins).
    """
    if os.path.isfile(name_or_path):
        return name_or_path
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
    for ext in (".yaml", ".yml", ".json"):
        cand = os.path.join(here, name_or_path + ext)
        if os.path.isfile(cand):
            return cand
    known = sorted(os.path.splitext(f)[0] for f in os.listdir(here) if f.endswith((".yaml", ".yml", ".json")))
    raise ConfigError([f"no such file or built-in recipe: {name_or_path!r}; built-in recipes: {known}"],
                      source="--config")


def load_experiment(name_or_path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a recipe file (or built-in recipe name), apply ``key=value`` overrides, and validate it.

    Raises:
        ConfigError: every unknown key, type error and failed check, naming the file and field.
    """
    path = recipe_path(name_or_path)
    data = apply_overrides(_resolve_extends(path, []), list(overrides or []))
    return from_mapping(ExperimentConfig, data, source=path, root="config")


#: Mappings that a recipe's ``extends`` replaces as a whole instead of merging key by key: a recipe
#: that lists ``data.languages`` gets exactly those languages (with a merge, the base's languages
#: would silently stay, and a base language could not be dropped).
REPLACED_BY_EXTENDS = (("data", "languages"),)


def _resolve_extends(path: str, chain: list[str]) -> dict:
    """The recipe's mapping deep-merged onto the recipe it ``extends`` (recursively); ``extends`` is consumed.

    Mappings in :data:`REPLACED_BY_EXTENDS` are taken whole from the extending recipe when it gives them.
    """
    if os.path.abspath(path) in chain:
        raise ConfigError([f"extends: cycle {' -> '.join(chain + [os.path.abspath(path)])}"], source=path)
    data = read_mapping(path)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ConfigError([f"extends: expected a recipe name or path, got {base_name!r}"], source=path)
    here = os.path.join(os.path.dirname(os.path.abspath(path)), base_name)
    base_path = here if os.path.isfile(here) else recipe_path(base_name)
    return _deep_merge(_resolve_extends(base_path, chain + [os.path.abspath(path)]), data)


def _deep_merge(base: dict, top: dict, where: tuple = ()) -> dict:
    out = dict(base)
    for k, v in top.items():
        merge = isinstance(v, dict) and isinstance(out.get(k), dict) and (*where, k) not in REPLACED_BY_EXTENDS
        out[k] = _deep_merge(out[k], v, (*where, k)) if merge else v
    return out


__all__ = ["AdapterConfig", "AnalysisConfig", "GradConflictConfig", "MetaConfig", "ConfigError", "DataConfig", "ExperimentConfig", "LanguageConfig", "ModelConfig", "MLMConfig",
           "NonFiniteConfig", "TrainConfig", "VocabConfig", "SplitConfig", "CleaningConfig", "load_experiment", "recipe_path",
           "to_mapping"]
