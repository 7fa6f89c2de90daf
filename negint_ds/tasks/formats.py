"""Readers for downstream data in the formats the datasets are released in, one file and one language at a time.

=========  ==============================================================  =================
kind       format                                                          returns
=========  ==============================================================  =================
conllu     Universal Dependencies CoNLL-U (UPOS tags; XTREME's UD-POS)     ``TokenExample``
bio        CoNLL-2003 / WikiANN one-token-per-line BIO (IOB1 or IOB2)      ``TokenExample``
xnli       XNLI 1.0 TSV, XNLI-MT / MultiNLI-style TSV, or JSONL            ``TextExample``
squad      SQuAD v1.1 JSON (TyDiQA-GoldP's release format)                 ``QAExample``
=========  ==============================================================  =================

Files are read as UTF-8 (a leading byte-order mark is ignored) and split on ``\\n`` only, so Unicode line
separators inside tokens do not break lines. Every parse error is a :class:`TaskError` naming ``file:line``
(or, for JSON, the key path) and the offending value. Example ids are ``file:line`` of the example's first
line, so an error raised downstream can point back into the file.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence

from negint_ds.tasks.examples import QAExample, TaskError, TextExample, TokenExample

#: XNLI's three classes, in the order of the Hugging Face ``facebook/xnli`` ClassLabel (0, 1, 2).
XNLI_LABELS = ("entailment", "neutral", "contradiction")

#: ISO 639-1 code → the language name TyDiQA uses as its question-id prefix (``swahili-123…``).
TYDIQA_LANGUAGES = {
    "ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian", "ja": "japanese",
    "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu", "th": "thai",
}

_BIO_LABEL = re.compile(r"(?:O|[BI]-\S+)\Z")
# CoNLL-2003 columns are space-separated and WikiANN's tab-separated; splitting on *any* Unicode whitespace
# would cut words that contain a no-break or ideographic space.
_BIO_SEP = re.compile(r"[\t ]+")


def _read_bytes(path: str) -> bytes:
    """Return the file's bytes without a UTF-8 byte-order mark; TaskError if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror or e})") from e
    return data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line without its line ending)``; TaskError naming the line if not UTF-8."""
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
        yield lineno, line.rstrip("\r")


def read_conllu(path: str, lang: str) -> list[TokenExample]:
    """Read a Universal Dependencies CoNLL-U file as POS-tagging sentences (words = FORM, labels = UPOS).

    Format: https://universaldependencies.org/format.html. Comment lines (``#``) are skipped; so are
    multiword-token lines (ID ``3-4``: their parts follow as ordinary words, which carry the tags) and empty
    nodes (ID ``5.1``: enhanced-graph nodes with no surface word), as XTREME's UD-POS preprocessing does.
    A blank line (or the end of the file) ends a sentence.

    Args:
        path: the ``.conllu`` file.
        lang: language id stored in every example.

    Returns:
        One ``TokenExample`` per sentence, ``id`` = ``file:line`` of its first word line.

    Raises:
        TaskError: the file cannot be read or is not UTF-8; a non-comment line without exactly 10
            tab-separated columns ("file:line: expected 10 tab-separated columns, got k"); an ID that is not an
            integer, range or decimal; a word whose UPOS is empty or ``_``; the file holds no sentence.
    """
    def token(lineno: int, line: str):
        if line.startswith("#"):
            return None
        cols = line.split("\t")
        if len(cols) != 10:
            raise TaskError(f"{path}:{lineno}: expected 10 tab-separated columns, got {len(cols)}")
        tid = cols[0]
        if re.fullmatch(r"\d+-\d+|\d+\.\d+", tid):
            return None
        if not tid.isdigit():
            raise TaskError(f"{path}:{lineno}: ID {tid!r} is not an integer, range (3-4) or empty node (5.1)")
        if cols[3] in ("", "_"):
            raise TaskError(f"{path}:{lineno}: word {cols[1]!r} has no UPOS (column 4 is {cols[3]!r})")
        return cols[1], cols[3]

    return _token_sentences(path, lang, token, list)


def _token_sentences(path: str, lang: str, token, finish) -> list[TokenExample]:
    """Sentences of a one-token-per-line file: ``token(lineno, line)`` gives (word, label), None to skip the line,
    or :data:`_SENTENCE_BREAK` to end the sentence; a blank line ends one too. ``finish(labels)`` post-processes
    a sentence's labels (e.g. :func:`to_iob2`).

    Raises:
        TaskError: from ``token``; the file holds no sentence.
    """
    out: list[TokenExample] = []
    words: list[str] = []
    tags: list[str] = []
    first = 0
    for lineno, line in [*_lines(path), (-1, "")]:  # a final blank line flushes the last sentence
        got = _SENTENCE_BREAK if not line.strip() else token(lineno, line)
        if got is _SENTENCE_BREAK:
            if words:
                out.append(TokenExample(tuple(words), tuple(finish(tags)), lang, f"{path}:{first}"))
                words, tags = [], []
            continue
        if got is None:
            continue
        if not words:
            first = lineno
        words.append(got[0])
        tags.append(got[1])
    if not out:
        raise TaskError(f"{path}: no sentences")
    return out


#: What a line parser of :func:`_token_sentences` returns to end the current sentence.
_SENTENCE_BREAK = object()


def to_iob2(labels: Sequence[str]) -> list[str]:
    """Convert one sentence's IOB1 labels to IOB2 (Tjong Kim Sang & Veenstra 1999; Ratinov & Roth 2009).

    In IOB1 (the original CoNLL-2003 files) an entity starts with ``I-X`` and ``B-X`` only separates two
    adjacent entities of the same type; in IOB2 every entity starts with ``B-X``. So an ``I-X`` that does not
    continue an entity of type X (it follows ``O``, another type, or opens the sentence) becomes ``B-X``.
    IOB2 input is returned unchanged.

    Args:
        labels: one sentence's labels, each ``O``, ``B-X`` or ``I-X``.

    Returns:
        A new list of the same length in IOB2.

    Raises:
        TaskError: a label is not ``O``, ``B-X`` or ``I-X`` (names its position and value).
    """
    out: list[str] = []
    prev = "O"
    for i, label in enumerate(labels):
        if not _BIO_LABEL.match(label):
            raise TaskError(f"label {i} ({label!r}) is not O, B-X or I-X")
        if label.startswith("I-") and (prev == "O" or prev[2:] != label[2:]):
            label = "B-" + label[2:]
        out.append(label)
        prev = label
    return out


def read_bio(path: str, lang: str) -> list[TokenExample]:
    """Read a CoNLL-2003 / WikiANN NER file: one token per line, word first and label last.

    Columns are separated by tabs or spaces (CoNLL-2003's ``EU NNP B-NP B-ORG`` and WikiANN's ``word\\tB-LOC``
    both work); a blank line ends a sentence; ``-DOCSTART-`` lines are document separators and are skipped.
    XTREME's WikiANN release prefixes every word with its language (``sw:Nairobi``); the prefix is removed
    when it is exactly ``lang + ":"`` and something follows it. Labels are converted to IOB2 with
    :func:`to_iob2`, so IOB1 files (CoNLL-2003 as released) and IOB2 files (WikiANN) give the same output.

    Args:
        path: the text file.
        lang: language id stored in every example and used for the prefix.

    Returns:
        One ``TokenExample`` per sentence with IOB2 labels, ``id`` = ``file:line`` of its first token.

    Raises:
        TaskError: the file cannot be read or is not UTF-8; a token line with fewer than two columns; a label
            that is not ``O``, ``B-X`` or ``I-X`` (names file:line and the label); the file holds no sentence.
    """
    prefix = lang + ":"

    def token(lineno: int, line: str):
        fields = _BIO_SEP.split(line.strip("\t "))
        if fields[0] == "-DOCSTART-":
            return _SENTENCE_BREAK
        if len(fields) < 2:
            raise TaskError(f"{path}:{lineno}: expected a word and a label, got {line!r}")
        word, label = fields[0], fields[-1]
        if not _BIO_LABEL.match(label):
            raise TaskError(f"{path}:{lineno}: label {label!r} is not O, B-X or I-X")
        if word.startswith(prefix) and len(word) > len(prefix):
            word = word[len(prefix):]
        return word, label

    return _token_sentences(path, lang, token, to_iob2)


def xnli_label(value: object, where: str) -> str:
    """Normalise an XNLI label: a class name, ``contradictory`` (XNLI-MT's spelling), or the Hugging Face
    ClassLabel id (0 entailment, 1 neutral, 2 contradiction).

    Args:
        value: the label as found in the file (str or int).
        where: ``file:line`` (or dataset position) for the error message.

    Returns:
        One of :data:`XNLI_LABELS`.

    Raises:
        TaskError: any other value (names ``where`` and the value).
    """
    # bool is an int subclass; True as a label is a malformed file, not "neutral".
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(XNLI_LABELS):
        return XNLI_LABELS[value]
    if isinstance(value, str):
        name = "contradiction" if value == "contradictory" else value
        if name in XNLI_LABELS:
            return name
    raise TaskError(f"{where}: label {value!r} is not entailment, neutral or contradiction")


def _read_xnli_jsonl(path: str, lang: str, lines: list[tuple[int, str]]) -> list[TextExample]:
    """Parse JSONL lines with ``premise``, ``hypothesis``, ``label`` (see :func:`read_xnli`)."""
    out = []
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: invalid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("premise", "hypothesis", "label"):
            if key not in row:
                raise TaskError(f"{where}: missing field {key!r}")
        for key in ("premise", "hypothesis"):
            if not isinstance(row[key], str):
                raise TaskError(f"{where}: field {key!r} is {type(row[key]).__name__}, expected a string")
        out.append(TextExample(row["premise"], xnli_label(row["label"], where), lang, row["hypothesis"], where))
    return out


def _read_xnli_tsv(path: str, lang: str, lines: list[tuple[int, str]]) -> list[TextExample]:
    """Parse an XNLI 1.0 or XNLI-MT TSV (see :func:`read_xnli`)."""
    # QUOTE_NONE: XNLI sentences contain unbalanced double quotes, which the default dialect would treat as
    # field quoting and merge lines or columns.
    rows = csv.reader((line for _, line in lines), delimiter="\t", quoting=csv.QUOTE_NONE)
    header_lineno = lines[0][0]
    try:
        header = next(rows)
    except csv.Error as e:
        raise TaskError(f"{path}:{header_lineno}: {e}") from e
    if {"language", "gold_label", "sentence1", "sentence2"} <= set(header):
        text_col, pair_col, label_col, lang_col = "sentence1", "sentence2", "gold_label", "language"
    elif {"premise", "hypo", "label"} <= set(header):
        text_col, pair_col, label_col, lang_col = "premise", "hypo", "label", None
    else:
        raise TaskError(
            f"{path}:{header_lineno}: header {header} is neither XNLI 1.0 (language, gold_label, sentence1, "
            "sentence2) nor XNLI-MT (premise, hypo, label)")
    col = {name: i for i, name in enumerate(header)}
    out = []
    seen_langs: set[str] = set()
    for lineno, _ in lines[1:]:
        try:
            row = next(rows)
        except csv.Error as e:
            raise TaskError(f"{path}:{lineno}: {e}") from e
        if not row or row == [""]:
            continue
        if len(row) != len(header):
            raise TaskError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, got {len(row)}")
        if lang_col is not None:
            seen_langs.add(row[col[lang_col]])
            if row[col[lang_col]] != lang:
                continue
        where = f"{path}:{lineno}"
        label = xnli_label(row[col[label_col]], where)
        out.append(TextExample(row[col[text_col]], label, lang, row[col[pair_col]], where))
    if lang_col is not None and not out:
        raise TaskError(f"{path}: no rows with language {lang!r} (languages in file: {sorted(seen_langs)})")
    return out


def read_xnli(path: str, lang: str) -> list[TextExample]:
    """Read XNLI sentence pairs in any of three released layouts, detected from the file's first line.

    (a) XNLI 1.0 ``xnli.{dev,test}.tsv`` (Conneau et al. 2018): header with ``language``, ``gold_label``,
        ``sentence1``, ``sentence2`` (among others); only rows whose ``language`` equals ``lang`` are kept.
    (b) XNLI-MT 1.0 ``multinli.train.<lang>.tsv``: header ``premise\\thypo\\tlabel``.
    (c) JSONL, one object per line with ``premise``, ``hypothesis`` and ``label``, where the label is a class
        name or the Hugging Face ClassLabel id (0 entailment, 1 neutral, 2 contradiction).

    XNLI-MT spells ``contradiction`` as ``contradictory``; it is normalised. Blank lines are skipped.

    Args:
        path: the file.
        lang: language id stored in every example (and the filter for XNLI 1.0).

    Returns:
        ``TextExample`` with ``text`` = premise, ``text_pair`` = hypothesis, ``id`` = ``file:line``.

    Raises:
        TaskError: unreadable / non-UTF-8 file; empty file; an unrecognised TSV header; a row with a column count
            different from the header's; invalid JSON or a missing field; a label outside {entailment, neutral,
            contradiction} (names file:line and value); no example for ``lang``.
    """
    lines = [(n, line) for n, line in _lines(path) if line.strip()]
    if not lines:
        raise TaskError(f"{path}: empty file")
    if lines[0][1].lstrip().startswith("{"):
        out = _read_xnli_jsonl(path, lang, lines)
    else:
        out = _read_xnli_tsv(path, lang, lines)
    if not out:
        raise TaskError(f"{path}: no examples")
    return out


def _field(obj: object, key: str, where: str, path: str, kind: type | tuple[type, ...]) -> object:
    """Return ``obj[key]``, checking presence and type; TaskError naming the key path (``where.key``)."""
    if not isinstance(obj, dict) or key not in obj:
        raise TaskError(f"{path}: missing key {where}.{key}" if where else f"{path}: missing key {key}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TaskError(f"{path}: {where + '.' if where else ''}{key} is {type(value).__name__}, expected {expected}")
    return value


def read_squad_json(path: str, lang: str) -> list[QAExample]:
    """Read a SQuAD v1.1 JSON file (Rajpurkar et al. 2016), the format TyDiQA-GoldP is released in.

    Layout: ``data[i].paragraphs[j].context`` and ``data[i].paragraphs[j].qas[k]`` with ``id``, ``question``
    and ``answers[m]`` = ``{"text", "answer_start"}`` (character offset into the context).

    TyDiQA-GoldP's train file mixes languages and prefixes each question id with the language name
    (``swahili-1234…-0``). When every id has such a prefix, only questions of ``lang`` are kept (see
    :data:`TYDIQA_LANGUAGES`), so a language's model is not trained on the other eight; ids without a TyDiQA
    prefix (SQuAD, MLQA-style) keep the whole file.

    Args:
        path: the JSON file.
        lang: ISO 639-1 language id stored in every example.

    Returns:
        One ``QAExample`` per question, answers as ``(text, start)`` in file order.

    Raises:
        TaskError: unreadable file or invalid JSON (names the line); a missing key or wrong type (names the key
            path, e.g. ``data[0].paragraphs[1].qas[2].answers[0].answer_start``); an answer whose
            ``context[start:start+len(text)]`` differs from its text (names file, question id, both strings);
            a question without answers; a duplicate question id; TyDiQA ids but ``lang`` not among them.
    """
    try:
        doc = json.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    out: list[QAExample] = []
    seen: set[str] = set()
    for i, article in enumerate(_field(doc, "data", "", path, list)):
        for j, para in enumerate(_field(article, "paragraphs", f"data[{i}]", path, list)):
            where_p = f"data[{i}].paragraphs[{j}]"
            context = _field(para, "context", where_p, path, str)
            for k, qa in enumerate(_field(para, "qas", where_p, path, list)):
                where_q = f"{where_p}.qas[{k}]"
                qid = _field(qa, "id", where_q, path, str)
                question = _field(qa, "question", where_q, path, str)
                if qid in seen:
                    raise TaskError(f"{path}: duplicate question id {qid!r} at {where_q}")
                seen.add(qid)
                answers = []
                for m, ans in enumerate(_field(qa, "answers", where_q, path, list)):
                    text = _field(ans, "text", f"{where_q}.answers[{m}]", path, str)
                    start = _field(ans, "answer_start", f"{where_q}.answers[{m}]", path, int)
                    found = context[start:start + len(text)] if start >= 0 else ""
                    if found != text:
                        raise TaskError(f"{path}: question {qid!r}: answer {text!r} != context[{start}:"
                                        f"{start + len(text)}] {found!r}")
                    answers.append((text, start))
                if not answers:
                    raise TaskError(f"{path}: question {qid!r} ({where_q}) has no answers")
                out.append(QAExample(qid, question, context, tuple(answers), lang))
    if not out:
        raise TaskError(f"{path}: no questions")
    return _keep_tydiqa_language(out, lang, path)


def tydiqa_language(qid: str) -> str | None:
    """Return the TyDiQA language name prefixing a question id (``swahili-…`` → ``swahili``), or None.

    Args:
        qid: a question id.

    Returns:
        One of the values of :data:`TYDIQA_LANGUAGES`, or None when the id has no such prefix.

    Raises:
        Nothing.
    """
    name = qid.split("-", 1)[0]
    return name if "-" in qid and name in TYDIQA_LANGUAGES.values() else None


def _keep_tydiqa_language(examples: list[QAExample], lang: str, where: str) -> list[QAExample]:
    """Filter TyDiQA-prefixed questions to ``lang``; leave other id schemes alone (see read_squad_json)."""
    names = {tydiqa_language(ex.id) for ex in examples}
    if None in names:
        return examples
    if lang not in TYDIQA_LANGUAGES:
        raise TaskError(f"{where}: TyDiQA question ids, but language {lang!r} is not a TyDiQA language "
                        f"({', '.join(sorted(TYDIQA_LANGUAGES))})")
    kept = [ex for ex in examples if tydiqa_language(ex.id) == TYDIQA_LANGUAGES[lang]]
    if not kept:
        raise TaskError(f"{where}: no {TYDIQA_LANGUAGES[lang]} questions for {lang!r} "
                        f"(languages present: {sorted(names)})")
    return kept


#: ``read_local`` kinds → reader.
READERS: dict[str, Callable[[str, str], list]] = {
    "conllu": read_conllu,
    "bio": read_bio,
    "xnli": read_xnli,
    "squad": read_squad_json,
}


def read_local(kind: str, path: str, lang: str) -> list[TokenExample] | list[TextExample] | list[QAExample]:
    """Read one local file of the given kind (see the module table).

    Args:
        kind: ``conllu``, ``bio``, ``xnli`` or ``squad``.
        path: the file.
        lang: language id.

    Returns:
        The reader's examples.

    Raises:
        TaskError: unknown ``kind`` (lists the kinds), ``path`` is not an existing file, or the reader's errors.
    """
    if kind not in READERS:
        raise TaskError(f"unknown data format {kind!r}; expected one of {', '.join(READERS)}")
    if not os.path.isfile(path):
        raise TaskError(f"{path}: no such file (format {kind})")
    return READERS[kind](path, lang)


__all__ = [
    "READERS", "TYDIQA_LANGUAGES", "XNLI_LABELS", "read_bio", "read_conllu", "read_local", "read_squad_json",
    "read_xnli", "to_iob2", "tydiqa_language", "xnli_label",
]
