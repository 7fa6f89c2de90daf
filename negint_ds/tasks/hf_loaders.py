"""Downstream data from the Hugging Face hub (``datasets.load_dataset``), converted to the task examples.

=========  ======================================  ===================  ============================
task       default hub dataset                     config               local-file equivalent
=========  ======================================  ===================  ============================
wikiann    ``unimelb-nlp/wikiann``                 ``lang``             ``bio`` (XTREME's release)
ud_pos     ``universal_dependencies``              ``treebank``         ``conllu``
xnli       ``facebook/xnli``                       ``lang``             ``xnli`` (XNLI 1.0 / XNLI-MT)
tydiqa     ``google-research-datasets/tydiqa``     ``secondary_task``   ``squad`` (TyDiQA-GoldP JSON)
=========  ======================================  ===================  ============================

Hub split names map to the project's: ``train`` → ``train``, ``validation`` → ``dev``, ``test`` → ``test``;
other splits are ignored and absent ones are simply missing from the result (TyDiQA-GoldP has no test split;
XTREME evaluates on its dev set).

``datasets`` itself decides between the cache and the network and honours ``HF_DATASETS_OFFLINE`` /
``HF_HUB_OFFLINE`` (read when ``datasets`` is imported); this module never overrides that. Any load failure
becomes a :class:`TaskError` saying to pass local files instead. Note that ``datasets`` ≥ 4 no longer runs
loading scripts, so script-only hub datasets (``universal_dependencies`` at the time of writing) need either
``name=`` pointing at a script-free (Parquet) copy, or local files.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from negint_ds.tasks.examples import QAExample, TaskError, TextExample, TokenExample
from negint_ds.tasks.formats import TYDIQA_LANGUAGES, to_iob2, tydiqa_language, xnli_label

#: Hub split name → project split name.
SPLIT_NAMES = {"train": "train", "validation": "dev", "test": "test"}

#: task → (default hub dataset, local ``--data_files`` format to suggest when loading fails).
HF_DATASETS = {
    "wikiann": ("unimelb-nlp/wikiann", "bio"),
    "ud_pos": ("universal_dependencies", "conllu"),
    "xnli": ("facebook/xnli", "xnli"),
    "tydiqa": ("google-research-datasets/tydiqa", "squad"),
}


def _label_names(features: Any, column: str, where: str) -> list[str] | None:
    """Return the ClassLabel names of ``column`` (a ClassLabel or a sequence of ClassLabel), or None when the
    column already holds strings (a mirror that stores names); TaskError when the column is missing."""
    if column not in features:
        raise TaskError(f"{where}: no column {column!r} (columns: {sorted(features)})")
    feature = features[column]
    # Sequence(ClassLabel) and List(ClassLabel) both expose the element type as .feature.
    feature = getattr(feature, "feature", feature)
    names = getattr(feature, "names", None)
    return list(names) if names is not None else None


def _decode(value: Any, names: list[str] | None, where: str) -> str:
    """Map a ClassLabel id to its name (or pass a string through); TaskError for an id out of range."""
    if names is None:
        return str(value)
    if not isinstance(value, int) or not 0 <= value < len(names):
        raise TaskError(f"{where}: label id {value!r} outside the ClassLabel's {len(names)} names")
    return names[value]


def _require(columns: dict[str, list], needed: tuple[str, ...], where: str) -> None:
    """TaskError naming the first column of ``needed`` that the split lacks."""
    for c in needed:
        if c not in columns:
            raise TaskError(f"{where}: no column {c!r} (columns: {sorted(columns)})")


def _token_examples(split: Any, lang: str, where: str, label_col: str, ner: bool) -> list[TokenExample]:
    """Convert a split with ``tokens`` and a per-token ClassLabel column to TokenExamples."""
    names = _label_names(split.features, label_col, where)
    cols = split.to_dict()
    _require(cols, ("tokens", label_col), where)
    prefix = lang + ":"
    out = []
    for i, (tokens, ids) in enumerate(zip(cols["tokens"], cols[label_col])):
        at = f"{where}:{i}"
        if len(tokens) != len(ids):
            raise TaskError(f"{at}: {len(tokens)} tokens but {len(ids)} labels")
        if not tokens:
            continue
        labels = [_decode(v, names, at) for v in ids]
        if ner:
            # WikiANN builds may keep XTREME's "<lang>:" word prefix; the contract is IOB2 words without it.
            tokens = [t[len(prefix):] if t.startswith(prefix) and len(t) > len(prefix) else t for t in tokens]
            try:
                labels = to_iob2(labels)
            except TaskError as e:
                raise TaskError(f"{at}: {e}") from e
        out.append(TokenExample(tuple(tokens), tuple(labels), lang, at))
    return out


def _wikiann(split: Any, lang: str, where: str) -> list[TokenExample]:
    return _token_examples(split, lang, where, "ner_tags", ner=True)


def _ud_pos(split: Any, lang: str, where: str) -> list[TokenExample]:
    return _token_examples(split, lang, where, "upos", ner=False)


def _xnli(split: Any, lang: str, where: str) -> list[TextExample]:
    names = _label_names(split.features, "label", where)
    cols = split.to_dict()
    _require(cols, ("premise", "hypothesis", "label"), where)
    out = []
    for i, (premise, hypothesis, label) in enumerate(zip(cols["premise"], cols["hypothesis"], cols["label"])):
        at = f"{where}:{i}"
        # Decode through the dataset's own names first, so a mirror with another class order stays correct.
        name = xnli_label(_decode(label, names, at) if names is not None else label, at)
        out.append(TextExample(premise, name, lang, hypothesis, at))
    return out


def _tydiqa(split: Any, lang: str, where: str) -> list[QAExample]:
    cols = split.to_dict()
    _require(cols, ("id", "question", "context", "answers"), where)
    wanted = TYDIQA_LANGUAGES[lang]
    out = []
    for qid, question, context, answers in zip(cols["id"], cols["question"], cols["context"], cols["answers"]):
        if tydiqa_language(qid) != wanted:
            continue
        texts, starts = answers["text"], answers["answer_start"]
        if not texts or len(texts) != len(starts):
            raise TaskError(f"{where}: question {qid!r}: {len(texts)} answer texts, {len(starts)} starts")
        for text, start in zip(texts, starts):
            found = context[start:start + len(text)] if start >= 0 else ""
            if found != text:
                raise TaskError(f"{where}: question {qid!r}: answer {text!r} != context[{start}:"
                                f"{start + len(text)}] {found!r}")
        out.append(QAExample(qid, question, context, tuple(zip(texts, starts)), lang))
    if not out and cols["id"]:
        # Every TyDiQA split holds all languages; none for ``lang`` means another id scheme (a mirror).
        raise TaskError(f"{where}: no question id starts with {wanted!r}- (e.g. {cols['id'][0]!r})")
    return out


_CONVERTERS: dict[str, Callable[[Any, str, str], list]] = {
    "wikiann": _wikiann, "ud_pos": _ud_pos, "xnli": _xnli, "tydiqa": _tydiqa,
}


def load_hf(task: str, lang: str, *, name: str | None = None, treebank: str | None = None,
            cache_dir: str | None = None) -> dict[str, list]:
    """Load one language of a downstream task from the Hugging Face hub (or the local ``datasets`` cache).

    Args:
        task: ``wikiann``, ``ud_pos``, ``xnli`` or ``tydiqa``.
        lang: language id; the dataset config for ``wikiann`` / ``xnli``, the TyDiQA id-prefix filter for
            ``tydiqa`` (ISO 639-1, see ``formats.TYDIQA_LANGUAGES``), stored in every example.
        name: hub dataset id overriding the task's default (e.g. a mirror); applies to every task.
        treebank: the UD treebank config (``en_ewt``, ``sw_…``); required for ``ud_pos``, ignored otherwise.
        cache_dir: ``datasets`` cache directory (default: the library's).

    Returns:
        ``{"train"|"dev"|"test": [examples]}`` for the hub splits present: ``TokenExample`` (IOB2 NER / UPOS),
        ``TextExample`` (premise, hypothesis) or ``QAExample``. Example ids are ``dataset/config/split:index``
        (TyDiQA keeps its question ids).

    Raises:
        TaskError: unknown task; ``ud_pos`` without ``treebank``; ``tydiqa`` with a language outside TyDiQA;
            ``datasets`` not installed; any load failure (offline without cache, unknown config, network error),
            naming the dataset and config and suggesting ``--data_files`` in the released format; a malformed
            row (label id out of range, token/label count mismatch, answer not in the context).
    """
    if task not in HF_DATASETS:
        raise TaskError(f"unknown hub task {task!r}; expected one of {', '.join(HF_DATASETS)}")
    default, local_format = HF_DATASETS[task]
    dataset = name or default
    if task == "ud_pos":
        if treebank is None:
            raise TaskError("ud_pos needs the UD treebank config: pass treebank= (e.g. en_ewt)")
        config = treebank
    elif task == "tydiqa":
        if lang not in TYDIQA_LANGUAGES:
            raise TaskError(f"TyDiQA has no language {lang!r}; expected one of {', '.join(sorted(TYDIQA_LANGUAGES))}")
        config = "secondary_task"
    else:
        config = lang
    try:
        import datasets
    except ImportError as e:
        raise TaskError(f"loading {dataset} needs the `datasets` package; pass local files instead "
                        f"(--data_files in the {local_format} format)") from e
    try:
        loaded = datasets.load_dataset(dataset, config, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - datasets raises many unrelated types (network, config, cache, IO)
        offline = " (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set and it is not cached)" \
            if getattr(datasets.config, "HF_HUB_OFFLINE", False) else ""
        raise TaskError(f"cannot load {dataset} config {config!r}{offline}: {type(e).__name__}: {e}; pass local "
                        f"files instead (--data_files in the released {local_format} format)") from e
    out = {}
    for hub_split, split in loaded.items():
        if hub_split in SPLIT_NAMES:
            where = f"{dataset}/{config}/{hub_split}"
            out[SPLIT_NAMES[hub_split]] = _CONVERTERS[task](split, lang, where)
    return out


__all__ = ["HF_DATASETS", "SPLIT_NAMES", "load_hf"]
