"""Downstream tasks on the verse-aligned Bible pretraining corpus: genre classification and verse retrieval.

Both read a run's own corpus through the pretraining pipeline (the language's :class:`BibleSource` with its
translation and ``max_documents``, the configured :class:`~negint_ds.data.clean.Cleaner`, the configured
split and ``max_train_sentences`` subsample), so a downstream split holds exactly the verses of the same
pretraining split: no test verse, and no translation of it, was seen in pretraining. The prepared text files
(``<data.dir>/text/<lang>.<split>.txt``) hold the same texts but not the verse keys, which the tasks need, so the
verses are recomputed from the source (a test checks that the two agree line for line).

Genres follow the traditional grouping of the 66 books of the Protestant canon found in many study Bibles and
Bible handbooks, by KJV book number: Law (Pentateuch) 1–5, History 6–17, Wisdom (Poetry) 18–22, Major Prophets
23–27, Minor Prophets 28–39, Gospels and Acts 40–44, Epistles 45–65, Revelation 66.
"""
from __future__ import annotations

from ..data.clean import Cleaner
from ..data.sources import source_for
from ..data.split import split_documents, subsample
from .examples import TASK_SPLITS, ParallelPair, TaskError, TextExample

#: The eight genres, in canonical book order.
BIBLE_GENRES: tuple[str, ...] = ("Law", "History", "Wisdom", "Major Prophets", "Minor Prophets", "Gospels and Acts",
                                 "Epistles", "Revelation")
#: Last KJV book number of each genre of :data:`BIBLE_GENRES`.
_GENRE_LAST_BOOK: tuple[int, ...] = (5, 17, 22, 27, 39, 44, 65, 66)


def book_genre(book: int) -> str:
    """The traditional genre of a Protestant-canon book (see the module docstring for the boundaries).

    Args:
        book: KJV book number, 1 (Genesis) to 66 (Revelation).

    Returns:
        One of :data:`BIBLE_GENRES`.

    Raises:
        TaskError: ``book`` is not an integer in 1–66.
    """
    if isinstance(book, bool) or not isinstance(book, int) or not 1 <= book <= 66:
        raise TaskError(f"bible book number must be an integer in 1-66 (KJV order), got {book!r}")
    for genre, last in zip(BIBLE_GENRES, _GENRE_LAST_BOOK):
        if book <= last:
            return genre
    raise AssertionError("unreachable: the last genre ends at book 66")


def verse_position(key: str) -> tuple[int, int, int]:
    """(book, chapter, verse) of a verse key ``bible:<book>:<chapter>:<verse>``.

    Args:
        key: a :class:`~negint_ds.data.sources.BibleSource` split key.

    Returns:
        The three numbers, for canonical (numeric) ordering.

    Raises:
        TaskError: ``key`` is not a Bible verse key.
    """
    parts = key.split(":")
    if len(parts) != 4 or parts[0] != "bible" or not all(p.isdigit() for p in parts[1:]):
        raise TaskError(f"not a bible verse key (bible:<book>:<chapter>:<verse>): {key!r}")
    return int(parts[1]), int(parts[2]), int(parts[3])


def bible_split_verses(data_cfg, lang: str) -> dict[str, dict[str, str]]:
    """The cleaned verses of one language of a run, per split, exactly as data preparation splits them.

    Args:
        data_cfg: the run's :class:`~negint_ds.config.DataConfig`.
        lang: a language id of ``data_cfg.languages`` (e.g. ``fr`` or ``fr_l``) whose source is ``bible``.

    Returns:
        ``{split: {verse key: cleaned text}}`` for ``train``/``dev``/``test`` (pretraining's ``valid`` is
        ``dev``), in canonical verse order; the train split follows ``max_train_sentences`` if set. The texts
        equal the lines of the prepared ``text/<lang>.<split>.txt``.

    Raises:
        TaskError: ``lang`` is not a language of the config, or its source is not the built-in bible.
        CorpusError: the corpus cannot be fetched or read (download or checksum failure).
    """
    if lang not in data_cfg.languages:
        raise TaskError(f"language {lang!r} is not in the run's data config; available: {sorted(data_cfg.languages)}")
    lc = data_cfg.languages[lang]
    if lc.source != "bible":
        raise TaskError(f"bible tasks need languages prepared from source: bible; {lang} uses {lc.source}")
    # the same steps, with the same config fields, as negint_ds.data.prepare._build
    docs = Cleaner.from_config(data_cfg.cleaning)(source_for(lang, data_cfg).documents())
    sp = split_documents(docs, data_cfg.split.valid_fraction, data_cfg.split.test_fraction, data_cfg.split.salt)
    if lc.max_train_sentences is not None:
        sp["train"] = subsample(sp["train"], lc.max_train_sentences, data_cfg.split.salt)
    return {"train": {d.key: d.text for d in sp["train"]}, "dev": {d.key: d.text for d in sp["valid"]},
            "test": {d.key: d.text for d in sp["test"]}}


def bible_genre(data_cfg, lang: str) -> dict[str, list[TextExample]]:
    """Verse genre classification (eight classes of :data:`BIBLE_GENRES`) on a run's own Bible splits.

    Args:
        data_cfg: the run's :class:`~negint_ds.config.DataConfig`.
        lang: a language id of the config whose source is ``bible``.

    Returns:
        ``{split: [TextExample]}`` for every split: text = the cleaned verse, label = its book's genre,
        lang = ``lang``, id = the verse key; canonical order.

    Raises:
        TaskError: as :func:`bible_split_verses`.
        CorpusError: as :func:`bible_split_verses`.
    """
    verses = bible_split_verses(data_cfg, lang)
    return {s: [TextExample(text, book_genre(verse_position(key)[0]), lang, id=key)
                for key, text in verses[s].items()] for s in TASK_SPLITS}


def bible_retrieval(data_cfg, lang: str, pivot: str = "en", split: str = "test") -> list[ParallelPair]:
    """Verse retrieval pairs (XTREME Tatoeba-style) between a language and a pivot of the same run.

    Args:
        data_cfg: the run's :class:`~negint_ds.config.DataConfig`.
        lang: a language id of the config whose source is ``bible``.
        pivot: another such language id (default ``en``).
        split: ``train``, ``dev`` or ``test``; both languages' verses come from this split (default ``test``:
            verses neither language saw in pretraining).

    Returns:
        One :class:`ParallelPair` per verse present in the split of both languages (cleaning may drop a
        verse in one: empty or a duplicate), id = the verse key, in canonical (book, chapter, verse) order.

    Raises:
        TaskError: ``lang`` equals ``pivot``; ``split`` is not a task split; either language is not a bible
            language of the config.
        CorpusError: as :func:`bible_split_verses`.
    """
    if lang == pivot:
        raise TaskError(f"retrieval needs two languages; language and pivot are both {lang!r}")
    if split not in TASK_SPLITS:
        raise TaskError(f"unknown split {split!r}; expected one of {list(TASK_SPLITS)}")
    src = bible_split_verses(data_cfg, lang)[split]
    piv = bible_split_verses(data_cfg, pivot)[split]
    keys = sorted(src.keys() & piv.keys(), key=verse_position)
    return [ParallelPair(src[k], piv[k], lang, pivot, id=k) for k in keys]


__all__ = ["BIBLE_GENRES", "bible_genre", "bible_retrieval", "bible_split_verses", "book_genre", "verse_position"]
