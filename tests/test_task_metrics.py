"""Downstream metrics against hand-computed values (every expected number is written as its arithmetic)."""
from __future__ import annotations

import pytest
import torch

from negint_ds.tasks.examples import TaskError
from negint_ds.tasks.metrics import (
    accuracy,
    entity_f1,
    macro_f1,
    normalize_answer,
    qa_exact_match,
    qa_f1,
    qa_scores,
    retrieval_accuracy,
    token_accuracy,
)


def f1_of(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


# ---------------------------------------------------------------- entity F1 (seqeval, default mode)

def test_entity_f1_partial_span_is_wrong():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "O"]]
    # gold entities: PER[0:2], LOC[3], ORG[0:2] (3); pred: PER[0:2], ORG[0:1] (2); correct: PER only —
    # the predicted ORG covers half of the gold ORG, which counts as a miss.
    p, r = 1 / 2, 1 / 3
    got = entity_f1(gold, pred)
    assert got["precision"] == pytest.approx(p)
    assert got["recall"] == pytest.approx(r)
    assert got["f1"] == pytest.approx(f1_of(p, r))  # = 2/5


def test_entity_f1_i_after_o_starts_an_entity():
    # default (conlleval) mode: the I-PER run after O is one PER entity spanning tokens 1..2, like B-PER I-PER.
    assert entity_f1([["O", "I-PER", "I-PER"]], [["O", "B-PER", "I-PER"]])["f1"] == pytest.approx(1.0)


def test_entity_f1_type_change_ends_and_starts():
    gold = [["B-PER", "I-LOC"]]  # PER[0], LOC[1]: the type change closes PER and opens LOC
    assert entity_f1(gold, [["B-PER", "B-LOC"]])["f1"] == pytest.approx(1.0)
    # PER[0:2] matches neither gold entity: p = 0/1, r = 0/2
    got = entity_f1(gold, [["B-PER", "I-PER"]])
    assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_entity_f1_two_of_three_types():
    gold = [["B-PER", "O", "B-LOC", "I-LOC"], ["B-MISC"]]
    pred = [["B-PER", "O", "B-LOC", "I-LOC"], ["B-ORG"]]
    # 3 gold, 3 predicted, 2 correct (PER, LOC): p = r = 2/3
    p = r = 2 / 3
    got = entity_f1(gold, pred)
    assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(r)
    assert got["f1"] == pytest.approx(f1_of(p, r))


def test_entity_f1_entities_do_not_cross_sentences_and_tuples_work():
    gold = (("B-PER",), ("I-PER",))  # two PER entities, one per sentence
    pred = (("B-PER",), ("B-PER",))
    assert entity_f1(gold, pred)["f1"] == pytest.approx(1.0)


def test_entity_f1_no_entities_is_zero():
    assert entity_f1([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_entity_f1_length_mismatch_names_sentence():
    with pytest.raises(TaskError, match="2 sentences, pred has 1"):
        entity_f1([["O"], ["O"]], [["O"]])
    with pytest.raises(TaskError, match="sentence 1: gold has 2 tokens, pred has 1"):
        entity_f1([["O"], ["O", "B-PER"]], [["O"], ["O"]])


# ---------------------------------------------------------------- token accuracy, accuracy, macro F1

def test_token_accuracy():
    gold = [["NOUN", "VERB"], ["DET", "NOUN", "PUNCT"]]
    pred = [["NOUN", "NOUN"], ["DET", "NOUN", "PUNCT"]]
    assert token_accuracy(gold, pred) == pytest.approx(4 / 5)  # one wrong token of 2 + 3


def test_token_accuracy_errors():
    with pytest.raises(TaskError, match="sentence 0: gold has 2 tokens, pred has 3"):
        token_accuracy([["A", "B"]], [["A", "B", "C"]])
    with pytest.raises(TaskError, match="no tokens"):
        token_accuracy([[]], [[]])


def test_accuracy():
    assert accuracy(["entailment", "neutral", "contradiction"],
                    ["entailment", "neutral", "neutral"]) == pytest.approx(2 / 3)
    with pytest.raises(TaskError, match="gold has 2 labels, pred has 1"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(TaskError, match="no examples"):
        accuracy([], [])


def test_macro_f1():
    gold = ["a", "a", "b", "c"]
    pred = ["a", "b", "b", "b"]
    f_a = f1_of(1 / 1, 1 / 2)  # tp 1, fp 0, fn 1
    f_b = f1_of(1 / 3, 1 / 1)  # tp 1, fp 2, fn 0
    f_c = 0.0                  # tp 0
    assert macro_f1(gold, pred, ["a", "b", "c"]) == pytest.approx((f_a + f_b + f_c) / 3)  # = 7/18
    # a label in neither list still counts in the mean with F1 0
    assert macro_f1(gold, pred, ["a", "b", "c", "d"]) == pytest.approx((f_a + f_b + f_c + 0.0) / 4)


def test_macro_f1_errors():
    with pytest.raises(TaskError, match="unique"):
        macro_f1(["a"], ["a"], ["a", "a"])
    with pytest.raises(TaskError, match="unique"):
        macro_f1(["a"], ["a"], [])
    with pytest.raises(TaskError, match="gold has 1 labels, pred has 2"):
        macro_f1(["a"], ["a", "b"], ["a", "b"])


# ---------------------------------------------------------------- SQuAD v1.1

@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"),
    ("theory", "theory"),                          # "the" inside a word stays
    ("Anthem of an era", "anthem of era"),
    ("  A  an the quick, brown-fox. ", "quick brownfox"),  # punctuation dropped, not replaced by a space
    ("THE", ""),
    ("Nairobi,\tKenya\n", "nairobi kenya"),
    ("«Nairobi»", "«nairobi»"),                    # not in string.punctuation: kept, as in the script
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_qa_exact_match():
    assert qa_exact_match("The Cat!", "cat") == 1.0
    assert qa_exact_match("the cats", "cat") == 0.0


def test_qa_f1():
    # [big, black, cat] vs [black, cat, sat]: 2 common, p = r = 2/3
    assert qa_f1("the big black cat", "a black cat sat") == pytest.approx(f1_of(2 / 3, 2 / 3))
    # [black, cat] vs [big, black, cat]: p = 2/2, r = 2/3
    assert qa_f1("black cat", "the big black cat") == pytest.approx(f1_of(1, 2 / 3))  # = 4/5
    # multiset overlap: [cat, cat] vs [cat] share one token: p = 1/2, r = 1/1
    assert qa_f1("cat cat", "cat") == pytest.approx(f1_of(1 / 2, 1))
    assert qa_f1("dog", "cat") == 0.0
    assert qa_f1("the", "cat") == 0.0  # prediction normalises to nothing


def test_qa_scores_max_over_golds_and_unanswered():
    answers = {"q1": ["Nairobi", "the city of Nairobi"], "q2": ["1963"], "q3": ["Kenya"]}
    predictions = {"q1": "city of Nairobi", "q2": "in 1963"}  # q3 unanswered: scores 0, still counted
    # q1: EM 1 and F1 1 against the second gold answer (max over golds)
    # q2: EM 0; F1 [in, 1963] vs [1963]: p = 1/2, r = 1
    em = (1 + 0 + 0) / 3
    f1 = (1 + f1_of(1 / 2, 1) + 0) / 3  # = 5/9
    got = qa_scores(predictions, answers)
    assert got["exact_match"] == pytest.approx(em)
    assert got["f1"] == pytest.approx(f1)
    assert got["n"] == 3 and got["unanswered"] == 1


def test_qa_scores_errors():
    with pytest.raises(TaskError, match="'q9'"):
        qa_scores({"q9": "x"}, {"q1": ["x"]})
    with pytest.raises(TaskError, match="no gold answer"):
        qa_scores({}, {"q1": []})
    with pytest.raises(TaskError, match="no questions"):
        qa_scores({}, {})


# ---------------------------------------------------------------- Tatoeba retrieval

def test_retrieval_ambiguous_row_both_directions():
    src = torch.eye(4)
    tgt = torch.stack([2 * torch.eye(4)[0],  # scaled: cosine ignores the norm
                       torch.eye(4)[1],
                       torch.eye(4)[3],       # wrong: the translation of src[3], not src[2]
                       torch.eye(4)[3]])
    # src→tgt: src0→0 ok, src1→1 ok; src2 is orthogonal to every tgt row, all ties at 0 → index 0, wrong;
    # src3 ties between tgt rows 2 and 3 → lowest index 2, wrong. 2/4.
    # tgt→src: tgt0→0, tgt1→1 ok; tgt2 (=e3) → src3, wrong; tgt3 → src3 ok. 3/4.
    got = retrieval_accuracy(src, tgt)
    assert got == {"src_to_tgt": 2 / 4, "tgt_to_src": 3 / 4, "n": 4}


def test_retrieval_permutation_fixed_points():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(5, 8, generator=g)
    tgt = 3 * src[[0, 2, 1, 3, 4]]  # rows 1 and 2 swapped: 3 of 5 rows are their own translation
    got = retrieval_accuracy(src.to(torch.bfloat16).float(), tgt.to(torch.bfloat16))
    assert got["src_to_tgt"] == pytest.approx(3 / 5)
    assert got["tgt_to_src"] == pytest.approx(3 / 5)


def test_retrieval_errors():
    with pytest.raises(TaskError, match=r"\(3, 4\) != tgt shape \(2, 4\)"):
        retrieval_accuracy(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(TaskError, match="empty"):
        retrieval_accuracy(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(TaskError, match=r"\(N, d\)"):
        retrieval_accuracy(torch.zeros(4), torch.zeros(4))
    bad = torch.eye(2)
    bad[0, 0] = float("nan")
    with pytest.raises(TaskError, match="NaN"):
        retrieval_accuracy(bad, torch.eye(2))
