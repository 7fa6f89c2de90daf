"""Local downstream files in their released formats, and Hugging Face loading with a fake ``load_dataset``.

No test touches the network: the hub loader is exercised through a monkeypatched ``datasets.load_dataset``.
"""
from __future__ import annotations

import json

import pytest

from negint_ds.tasks.examples import QAExample, TaskError, TextExample, TokenExample
from negint_ds.tasks.formats import (
    read_bio,
    read_conllu,
    read_local,
    read_squad_json,
    read_xnli,
    to_iob2,
)
from negint_ds.tasks.hf_loaders import load_hf


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def row(*cols: str) -> str:
    return "\t".join(cols)


# ---------------------------------------------------------------- CoNLL-U

CONLLU = "\n".join([
    "# sent_id = es-1",                                            # 1
    "# text = Del mar vino.",                                      # 2
    row("1-2", "Del", "_", "_", "_", "_", "_", "_", "_", "_"),     # 3 multiword token: skipped
    row("1", "De", "de", "ADP", "_", "_", "3", "case", "_", "_"),  # 4
    row("2", "el", "el", "DET", "_", "Definite=Def", "3", "det", "_", "_"),
    row("3", "mar", "mar", "NOUN", "_", "_", "4", "obl", "_", "_"),
    row("3.1", "vino", "venir", "VERB", "_", "_", "_", "_", "4:conj", "CopyOf=4"),  # 7 empty node: skipped
    row("4", "vino", "venir", "VERB", "_", "_", "0", "root", "_", "SpaceAfter=No"),
    row("5", ".", ".", "PUNCT", "_", "_", "4", "punct", "_", "_"),
    "",                                                            # 10
    "# sent_id = es-2",
    row("1", "Hola", "hola", "INTJ", "_", "_", "0", "root", "_", "_"),  # 12
    row("2", "amigo", "amigo", "NOUN", "_", "_", "1", "vocative", "_", "_"),  # no trailing blank line
])


def test_read_conllu(tmp_path):
    path = write(tmp_path, "es.conllu", CONLLU)
    assert read_conllu(path, "es") == [
        TokenExample(("De", "el", "mar", "vino", "."), ("ADP", "DET", "NOUN", "VERB", "PUNCT"), "es", f"{path}:4"),
        TokenExample(("Hola", "amigo"), ("INTJ", "NOUN"), "es", f"{path}:12"),
    ]


def test_read_conllu_column_count(tmp_path):
    path = write(tmp_path, "bad.conllu", "# c\n1 De de ADP _ _ 3 case _ _\n")  # spaces, not tabs
    with pytest.raises(TaskError, match=r"bad\.conllu:2: expected 10 tab-separated columns, got 1"):
        read_conllu(path, "es")
    path = write(tmp_path, "nine.conllu", row("1", "De", "de", "ADP", "_", "_", "3", "case", "_") + "\n")
    with pytest.raises(TaskError, match=r"nine\.conllu:1: expected 10 tab-separated columns, got 9"):
        read_conllu(path, "es")


def test_read_conllu_other_errors(tmp_path):
    path = write(tmp_path, "noupos.conllu", row("1", "De", "de", "_", "_", "_", "0", "root", "_", "_"))
    with pytest.raises(TaskError, match=r"noupos\.conllu:1: word 'De' has no UPOS"):
        read_conllu(path, "es")
    path = write(tmp_path, "id.conllu", row("x", "De", "de", "ADP", "_", "_", "0", "root", "_", "_"))
    with pytest.raises(TaskError, match=r"id\.conllu:1: ID 'x'"):
        read_conllu(path, "es")
    with pytest.raises(TaskError, match="no sentences"):
        read_conllu(write(tmp_path, "empty.conllu", "# only a comment\n\n"), "es")
    (tmp_path / "latin1.conllu").write_bytes(b"# ok\n# caf\xe9\n")
    with pytest.raises(TaskError, match=r"latin1\.conllu:2: not valid UTF-8"):
        read_conllu(str(tmp_path / "latin1.conllu"), "es")


# ---------------------------------------------------------------- BIO (WikiANN, CoNLL-2003)

def test_to_iob2():
    assert to_iob2(["I-PER", "I-PER", "I-LOC", "O", "I-ORG", "B-ORG", "I-ORG", "I-MISC"]) == \
        ["B-PER", "I-PER", "B-LOC", "O", "B-ORG", "B-ORG", "I-ORG", "B-MISC"]
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert to_iob2(iob2) == iob2
    assert to_iob2([]) == []
    with pytest.raises(TaskError, match=r"label 1 \('PER'\)"):
        to_iob2(["O", "PER"])


def test_read_bio_wikiann_xtreme(tmp_path):
    path = write(tmp_path, "sw.txt", "\n".join([
        row("sw:Nairobi", "B-LOC"),
        row("sw:ni", "O"),
        row("sw:mji", "O"),
        row("sw:mkuu", "O"),
        row("sw:wa", "O"),
        row("sw:Kenya", "B-LOC"),
        "",
        row("sw:Rais", "O"),
        row("sw:Uhuru", "B-PER"),
        row("sw:Kenyatta", "I-PER"),
        row("en:Nairobi", "B-LOC"),  # another language's prefix is part of the word
        row("sw:", "O"),             # nothing after the prefix: the word is "sw:"
        "", "",
    ]))
    assert read_bio(path, "sw") == [
        TokenExample(("Nairobi", "ni", "mji", "mkuu", "wa", "Kenya"), ("B-LOC", "O", "O", "O", "O", "B-LOC"),
                     "sw", f"{path}:1"),
        TokenExample(("Rais", "Uhuru", "Kenyatta", "en:Nairobi", "sw:"), ("O", "B-PER", "I-PER", "B-LOC", "O"),
                     "sw", f"{path}:8"),
    ]


def test_read_bio_conll2003_iob1(tmp_path):
    path = write(tmp_path, "eng.train", "\n".join([
        "-DOCSTART- -X- -X- O",
        "",
        "EU NNP I-NP I-ORG",        # 3
        "rejects VBZ I-VP O",
        "German JJ I-NP I-MISC",
        "call NN I-NP O",
        "to TO I-VP O",
        "boycott VB I-VP O",
        "British JJ I-NP I-MISC",
        "lamb NN I-NP O",
        ". . O O",
        "",
        "Britain NNP I-NP I-LOC",   # 13
        "France NNP I-NP B-LOC",    # IOB1 B-: a second LOC right after the first
        "Peter NNP I-NP I-PER",
        "Blackburn NNP I-NP I-PER",
        "",
    ]))
    assert read_bio(path, "en") == [
        TokenExample(("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."),
                     ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"), "en", f"{path}:3"),
        TokenExample(("Britain", "France", "Peter", "Blackburn"), ("B-LOC", "B-LOC", "B-PER", "I-PER"),
                     "en", f"{path}:13"),
    ]


def test_read_bio_errors(tmp_path):
    path = write(tmp_path, "bad.txt", row("sw:Nairobi", "B-LOC") + "\n" + row("sw:Kenya", "LOC") + "\n")
    with pytest.raises(TaskError, match=r"bad\.txt:2: label 'LOC' is not O, B-X or I-X"):
        read_bio(path, "sw")
    path = write(tmp_path, "bad2.txt", "Nairobi B_LOC\n")
    with pytest.raises(TaskError, match=r"bad2\.txt:1: label 'B_LOC'"):
        read_bio(path, "sw")
    path = write(tmp_path, "onecol.txt", "Nairobi\n")
    with pytest.raises(TaskError, match=r"onecol\.txt:1: expected a word and a label"):
        read_bio(path, "sw")


# ---------------------------------------------------------------- XNLI

XNLI10_HEADER = row("language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse",
                    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID", "genre",
                    "label1", "label2", "label3", "label4", "label5", "sentence1_tokenized",
                    "sentence2_tokenized", "match")


def xnli10_row(lang: str, label: str, s1: str, s2: str, pair: str) -> str:
    return row(lang, label, "", "", "", "", s1, s2, "1", pair, "facetoface", label, label, label, label, label,
               s1, s2, "True")


def test_read_xnli_10_filters_language(tmp_path):
    path = write(tmp_path, "xnli.test.tsv", "\n".join([
        XNLI10_HEADER,
        xnli10_row("en", "contradiction", 'He said "no.', "He agreed.", "1"),   # 2: unbalanced quote
        xnli10_row("sw", "entailment", "Alisema \"ndiyo\".", "Alikubali.", "1"),  # 3
        xnli10_row("en", "neutral", "Well, I wasn't even thinking.", "I was sad.", "2"),
        xnli10_row("sw", "neutral", "Sikuwa nikifikiria.", "Nilihuzunika.", "2"),  # 5
        "",
    ]))
    assert read_xnli(path, "sw") == [
        TextExample("Alisema \"ndiyo\".", "entailment", "sw", "Alikubali.", f"{path}:3"),
        TextExample("Sikuwa nikifikiria.", "neutral", "sw", "Nilihuzunika.", f"{path}:5"),
    ]
    assert [e.label for e in read_xnli(path, "en")] == ["contradiction", "neutral"]
    assert read_xnli(path, "en")[0].text == 'He said "no.'
    with pytest.raises(TaskError, match=r"no rows with language 'de' \(languages in file: \['en', 'sw'\]\)"):
        read_xnli(path, "de")


def test_read_xnli_mt(tmp_path):
    path = write(tmp_path, "multinli.train.sw.tsv", "\n".join([
        row("premise", "hypo", "label"),
        row("Dhana ya \" samaki", "Samaki ni wengi.", "contradictory"),
        row("Ni siku nzuri.", "Jua linawaka.", "neutral"),
    ]) + "\n")
    assert read_xnli(path, "sw") == [
        TextExample("Dhana ya \" samaki", "contradiction", "sw", "Samaki ni wengi.", f"{path}:2"),
        TextExample("Ni siku nzuri.", "neutral", "sw", "Jua linawaka.", f"{path}:3"),
    ]


def test_read_xnli_jsonl(tmp_path):
    lines = [{"premise": "P0", "hypothesis": "H0", "label": 0},
             {"premise": "P1", "hypothesis": "H1", "label": 1},
             {"premise": "P2", "hypothesis": "H2", "label": 2},
             {"premise": "P3", "hypothesis": "H3", "label": "contradictory"}]
    path = write(tmp_path, "sw.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_xnli(path, "sw") == [
        TextExample("P0", "entailment", "sw", "H0", f"{path}:1"),
        TextExample("P1", "neutral", "sw", "H1", f"{path}:2"),
        TextExample("P2", "contradiction", "sw", "H2", f"{path}:3"),
        TextExample("P3", "contradiction", "sw", "H3", f"{path}:4"),
    ]


def test_read_xnli_errors(tmp_path):
    path = write(tmp_path, "a.tsv", row("premise", "hypo", "label") + "\n" + row("p", "h", "contradicts") + "\n")
    with pytest.raises(TaskError, match=r"a\.tsv:2: label 'contradicts' is not entailment"):
        read_xnli(path, "sw")
    path = write(tmp_path, "b.tsv", row("premise", "hypo", "label") + "\n" + row("p", "h") + "\n")
    with pytest.raises(TaskError, match=r"b\.tsv:2: expected 3 tab-separated columns, got 2"):
        read_xnli(path, "sw")
    path = write(tmp_path, "c.tsv", row("text", "label") + "\n")
    with pytest.raises(TaskError, match=r"c\.tsv:1: header \['text', 'label'\] is neither"):
        read_xnli(path, "sw")
    path = write(tmp_path, "d.jsonl", '{"premise": "p", "hypothesis": "h", "label": 3}\n')
    with pytest.raises(TaskError, match=r"d\.jsonl:1: label 3 is not"):
        read_xnli(path, "sw")
    path = write(tmp_path, "e.jsonl", '{"premise": "p", "label": 0}\n')
    with pytest.raises(TaskError, match=r"e\.jsonl:1: missing field 'hypothesis'"):
        read_xnli(path, "sw")
    path = write(tmp_path, "f.jsonl", '{"premise": "p", "hypothesis": "h", "label": 0}\n{"premise": \n')
    with pytest.raises(TaskError, match=r"f\.jsonl:2: invalid JSON"):
        read_xnli(path, "sw")
    path = write(tmp_path, "g.jsonl", '{"premise": "p", "hypothesis": "h", "label": true}\n')
    with pytest.raises(TaskError, match=r"g\.jsonl:1: label True"):
        read_xnli(path, "sw")
    with pytest.raises(TaskError, match="empty file"):
        read_xnli(write(tmp_path, "h.tsv", "\n"), "sw")


# ---------------------------------------------------------------- SQuAD / TyDiQA-GoldP

SW_CONTEXT = "Nairobi ni mji mkuu wa Kenya. Ilianzishwa mwaka 1899."
EN_CONTEXT = "Helsinki is the capital of Finland."


def tydiqa_doc() -> dict:
    return {"version": "1.1", "data": [
        {"title": "Nairobi", "paragraphs": [{"context": SW_CONTEXT, "qas": [
            {"id": "swahili-7390415640113932154-0", "question": "Mji mkuu wa Kenya ni upi?",
             "answers": [{"text": "Nairobi", "answer_start": 0}]},
            {"id": "swahili-7390415640113932154-1", "question": "Nairobi ilianzishwa lini?",
             "answers": [{"text": "1899", "answer_start": 48}, {"text": "mwaka 1899", "answer_start": 42}]},
        ]}]},
        {"title": "Helsinki", "paragraphs": [{"context": EN_CONTEXT, "qas": [
            {"id": "english-1020367347537516290-0", "question": "What is the capital of Finland?",
             "answers": [{"text": "Helsinki", "answer_start": 0}]},
        ]}]},
    ]}


def test_read_squad_tydiqa_keeps_language(tmp_path):
    path = write(tmp_path, "tydiqa-goldp-v1.1-train.json", json.dumps(tydiqa_doc(), ensure_ascii=False))
    assert read_squad_json(path, "sw") == [
        QAExample("swahili-7390415640113932154-0", "Mji mkuu wa Kenya ni upi?", SW_CONTEXT, (("Nairobi", 0),), "sw"),
        QAExample("swahili-7390415640113932154-1", "Nairobi ilianzishwa lini?", SW_CONTEXT,
                  (("1899", 48), ("mwaka 1899", 42)), "sw"),
    ]
    assert [q.id for q in read_squad_json(path, "en")] == ["english-1020367347537516290-0"]
    with pytest.raises(TaskError, match="no finnish questions"):
        read_squad_json(path, "fi")
    with pytest.raises(TaskError, match="'de' is not a TyDiQA language"):
        read_squad_json(path, "de")


def test_read_squad_plain_ids_keep_everything(tmp_path):
    doc = {"data": [{"paragraphs": [{"context": EN_CONTEXT, "qas": [
        {"id": "56be4db0acb8001400a502ec", "question": "Capital?",
         "answers": [{"text": "Helsinki", "answer_start": 0}]},
    ]}]}]}
    path = write(tmp_path, "squad.json", json.dumps(doc))
    assert read_squad_json(path, "de") == [
        QAExample("56be4db0acb8001400a502ec", "Capital?", EN_CONTEXT, (("Helsinki", 0),), "de")]


def test_read_squad_answer_mismatch(tmp_path):
    doc = tydiqa_doc()
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 47
    path = write(tmp_path, "bad.json", json.dumps(doc))
    with pytest.raises(TaskError, match=r"bad\.json: question 'swahili-7390415640113932154-1': answer '1899' "
                                        r"!= context\[47:51\] ' 189'"):
        read_squad_json(path, "sw")


def test_read_squad_structure_errors(tmp_path):
    doc = tydiqa_doc()
    del doc["data"][0]["paragraphs"][0]["qas"][1]["answers"][1]["answer_start"]
    path = write(tmp_path, "nokey.json", json.dumps(doc))
    key = r"data\[0\]\.paragraphs\[0\]\.qas\[1\]\.answers\[1\]\.answer_start"
    with pytest.raises(TaskError, match="missing key " + key):
        read_squad_json(path, "sw")
    with pytest.raises(TaskError, match="missing key data$"):
        read_squad_json(write(tmp_path, "nodata.json", "{}"), "sw")
    doc = tydiqa_doc()
    doc["data"][0]["paragraphs"][0]["qas"][1]["id"] = "swahili-7390415640113932154-0"
    with pytest.raises(TaskError, match="duplicate question id"):
        read_squad_json(write(tmp_path, "dup.json", json.dumps(doc)), "sw")
    doc = tydiqa_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    with pytest.raises(TaskError, match="has no answers"):
        read_squad_json(write(tmp_path, "noans.json", json.dumps(doc)), "sw")
    doc = tydiqa_doc()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "0"
    with pytest.raises(TaskError, match=r"answers\[0\]\.answer_start is str, expected int"):
        read_squad_json(write(tmp_path, "type.json", json.dumps(doc)), "sw")
    with pytest.raises(TaskError, match=r"trunc\.json:1: invalid JSON"):
        read_squad_json(write(tmp_path, "trunc.json", '{"data": ['), "sw")


# ---------------------------------------------------------------- read_local

def test_read_local_dispatch_and_errors(tmp_path):
    conllu = write(tmp_path, "x.conllu", CONLLU)
    assert read_local("conllu", conllu, "es") == read_conllu(conllu, "es")
    bio = write(tmp_path, "x.bio", "Nairobi B-LOC\n")
    assert read_local("bio", bio, "sw")[0].labels == ("B-LOC",)
    xnli = write(tmp_path, "x.jsonl", '{"premise": "p", "hypothesis": "h", "label": 0}\n')
    assert read_local("xnli", xnli, "sw")[0].label == "entailment"
    squad = write(tmp_path, "x.json", json.dumps(tydiqa_doc()))
    assert len(read_local("squad", squad, "sw")) == 2
    with pytest.raises(TaskError, match="unknown data format 'csv'; expected one of conllu, bio, xnli, squad"):
        read_local("csv", squad, "sw")
    with pytest.raises(TaskError, match=r"missing\.conllu: no such file \(format conllu\)"):
        read_local("conllu", str(tmp_path / "missing.conllu"), "es")


# ---------------------------------------------------------------- Hugging Face loaders (fake hub)

import datasets  # noqa: E402  an install requirement of negint_ds

WIKIANN_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
UPOS_NAMES = ["NOUN", "PUNCT", "ADP", "NUM", "SYM", "SCONJ", "ADJ", "PART", "DET", "CCONJ", "PROPN", "PRON", "X",
              "_", "ADV", "INTJ", "VERB", "AUX"]


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace ``datasets.load_dataset`` with a dict lookup; record the calls."""
    calls, store = [], {}

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        result = store[(path, name)]
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, store


def wikiann_split(rows):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=WIKIANN_NAMES)),
                         "langs": Sequence(Value("string")), "spans": Sequence(Value("string"))})
    return Dataset.from_dict({"tokens": [r[0] for r in rows], "ner_tags": [r[1] for r in rows],
                              "langs": [["sw"] * len(r[0]) for r in rows], "spans": [[] for _ in rows]},
                             features=features)


def test_load_hf_wikiann(fake_hub):
    calls, store = fake_hub
    store[("unimelb-nlp/wikiann", "sw")] = datasets.DatasetDict({
        "train": wikiann_split([(["Nairobi", "ni", "mji"], [5, 0, 0]), (["Uhuru", "Kenyatta"], [1, 2])]),
        "validation": wikiann_split([(["Kenya"], [6])]),  # I-LOC opening a sentence → B-LOC (IOB2 contract)
        "test": wikiann_split([(["sw:Mombasa"], [5])]),
    })
    got = load_hf("wikiann", "sw", cache_dir="/tmp/cache")
    assert calls == [("unimelb-nlp/wikiann", "sw", {"cache_dir": "/tmp/cache"})]
    where = "unimelb-nlp/wikiann/sw"
    assert got == {
        "train": [TokenExample(("Nairobi", "ni", "mji"), ("B-LOC", "O", "O"), "sw", f"{where}/train:0"),
                  TokenExample(("Uhuru", "Kenyatta"), ("B-PER", "I-PER"), "sw", f"{where}/train:1")],
        "dev": [TokenExample(("Kenya",), ("B-LOC",), "sw", f"{where}/validation:0")],
        "test": [TokenExample(("Mombasa",), ("B-LOC",), "sw", f"{where}/test:0")],
    }


def test_load_hf_ud_pos(fake_hub):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    calls, store = fake_hub
    features = Features({"idx": Value("string"), "tokens": Sequence(Value("string")),
                         "upos": Sequence(ClassLabel(names=UPOS_NAMES))})
    store[("universal_dependencies", "en_ewt")] = datasets.DatasetDict({
        "train": Dataset.from_dict({"idx": ["s1"], "tokens": [["The", "cat", "sat", "."]],
                                   "upos": [[8, 0, 16, 1]]}, features=features),
        "validation": Dataset.from_dict({"idx": ["s2"], "tokens": [["Hi"]], "upos": [[15]]}, features=features),
        "extra": Dataset.from_dict({"idx": ["s3"], "tokens": [["x"]], "upos": [[12]]}, features=features),
    })
    got = load_hf("ud_pos", "en", treebank="en_ewt")
    assert calls[0][:2] == ("universal_dependencies", "en_ewt")
    assert sorted(got) == ["dev", "train"]  # no test split in the fake; "extra" is not a project split
    assert got["train"][0].words == ("The", "cat", "sat", ".")
    assert got["train"][0].labels == ("DET", "NOUN", "VERB", "PUNCT")
    assert got["dev"][0].labels == ("INTJ",)
    with pytest.raises(TaskError, match="ud_pos needs the UD treebank config: pass treebank="):
        load_hf("ud_pos", "en")


def test_load_hf_xnli(fake_hub):
    from datasets import ClassLabel, Dataset, Features, Value
    calls, store = fake_hub
    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=["entailment", "neutral", "contradiction"])})
    store[("facebook/xnli", "sw")] = datasets.DatasetDict({
        "test": Dataset.from_dict({"premise": ["P0", "P1"], "hypothesis": ["H0", "H1"], "label": [2, 0]},
                                  features=features),
    })
    assert load_hf("xnli", "sw") == {"test": [
        TextExample("P0", "contradiction", "sw", "H0", "facebook/xnli/sw/test:0"),
        TextExample("P1", "entailment", "sw", "H1", "facebook/xnli/sw/test:1"),
    ]}


def tydiqa_split(rows):
    from datasets import Dataset, Features, Sequence, Value
    features = Features({"id": Value("string"), "title": Value("string"), "context": Value("string"),
                         "question": Value("string"),
                         "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")})})
    return Dataset.from_dict({
        "id": [r[0] for r in rows], "title": ["t"] * len(rows), "context": [r[1] for r in rows],
        "question": [r[2] for r in rows], "answers": [r[3] for r in rows]}, features=features)


def test_load_hf_tydiqa_filters_language(fake_hub):
    calls, store = fake_hub
    sw = ("swahili-1-0", SW_CONTEXT, "Lini?", {"text": ["1899", "mwaka 1899"], "answer_start": [48, 42]})
    en = ("english-2-0", EN_CONTEXT, "Capital?", {"text": ["Helsinki"], "answer_start": [0]})
    store[("google-research-datasets/tydiqa", "secondary_task")] = datasets.DatasetDict({
        "train": tydiqa_split([en, sw]), "validation": tydiqa_split([sw, en]),
    })
    got = load_hf("tydiqa", "sw")
    assert calls[0][:2] == ("google-research-datasets/tydiqa", "secondary_task")
    expected = QAExample("swahili-1-0", "Lini?", SW_CONTEXT, (("1899", 48), ("mwaka 1899", 42)), "sw")
    assert got == {"train": [expected], "dev": [expected]}
    assert [q.id for q in load_hf("tydiqa", "en")["dev"]] == ["english-2-0"]
    with pytest.raises(TaskError, match="no question id starts with 'finnish'-"):
        load_hf("tydiqa", "fi")
    with pytest.raises(TaskError, match="TyDiQA has no language 'de'"):
        load_hf("tydiqa", "de")


def test_load_hf_wraps_load_failures(fake_hub, monkeypatch):
    calls, store = fake_hub
    store[("unimelb-nlp/wikiann", "sw")] = ConnectionError("Couldn't reach 'unimelb-nlp/wikiann' on the Hub")
    with pytest.raises(TaskError, match=r"cannot load unimelb-nlp/wikiann config 'sw': ConnectionError: .*"
                                        r"pass local files instead \(--data_files in the released bio format\)"):
        load_hf("wikiann", "sw")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    store[("my/mirror", "sw")] = FileNotFoundError("not cached")
    with pytest.raises(TaskError, match=r"cannot load my/mirror config 'sw' \(HF_DATASETS_OFFLINE.*is set.*"
                                        r"xnli format"):
        load_hf("xnli", "sw", name="my/mirror")
    with pytest.raises(TaskError, match="unknown hub task 'ner'"):
        load_hf("ner", "sw")
