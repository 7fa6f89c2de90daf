"""The majority-class floor of a fine-tuning grid (negint_ds.tasks.baseline), against hand-computed values."""
from __future__ import annotations

import pytest

from negint_ds.tasks.baseline import majority_label, majority_scores
from negint_ds.tasks.examples import TextExample, TokenExample
from negint_ds.tasks.grid import Plan, floors, markdown, summarize
from negint_ds.tasks.registry import task_spec


def _texts(labels, lang="sw"):
    return [TextExample(f"t{i}", lab, lang) for i, lab in enumerate(labels)]


def test_sequence_floor_is_the_constant_train_majority_scored_on_test():
    spec = task_spec("bible_genre")
    train, test = _texts(["a", "a", "b", "c"]), _texts(["a", "b", "b", "c"])
    s = majority_scores(spec, train, test, ("a", "b", "c"))
    # predicting "a" everywhere: 1 of 4 right; F1(a) = 2·(1/4)·1/(1/4 + 1) = 0.4, F1(b) = F1(c) = 0
    assert s["accuracy"] == pytest.approx(0.25)
    assert s["macro_f1"] == pytest.approx(0.4 / 3)


def test_majority_is_taken_from_train_not_test_and_ties_go_to_label_order():
    spec = task_spec("bible_genre")
    assert majority_label(spec, _texts(["c", "b", "b", "c"]), ("a", "b", "c")) == "b"
    assert majority_label(spec, _texts(["c", "b", "b", "c"]), ("c", "b")) == "c"
    s = majority_scores(spec, _texts(["b", "b", "a"]), _texts(["a", "a", "a", "b"]), ("a", "b"))
    assert s["accuracy"] == pytest.approx(0.25)  # the test majority "a" would give 0.75


def test_token_floor_pos_accuracy_and_ner_all_outside_scores_zero():
    pos = task_spec("pattern_pos")
    train = [TokenExample(("x", "y", "z"), ("NOUN", "VERB", "NOUN"), "fr")]
    test = [TokenExample(("x", "y"), ("NOUN", "ADJ"), "fr"), TokenExample(("z",), ("NOUN",), "fr")]
    assert majority_scores(pos, train, test, ("VERB", "NOUN", "ADJ")) == {"accuracy": pytest.approx(2 / 3)}
    ner = task_spec("ner")
    train = [TokenExample(("a", "b", "c"), ("O", "B-PER", "O"), "fr")]
    test = [TokenExample(("a", "b"), ("B-LOC", "O"), "fr")]
    assert majority_scores(ner, train, test, ("O", "B-PER", "B-LOC"))["f1"] == 0.0


def test_qa_has_no_floor_and_an_unlabelled_train_split_is_an_error():
    assert majority_scores(task_spec("tydiqa"), [], [], ()) is None
    with pytest.raises(ValueError, match="no labels"):
        majority_label(task_spec("bible_genre"), [], ("a",))


def _result(tl, test, acc, seed=1):
    return {"name": f"c{seed}", "best_epoch": 1, "best_dev": 0.5, "wall_seconds": 1.0,
            "cell": {"setting": "zero_shot", "train_lang": tl, "batch_size": 8, "lr": 1e-4, "classifier_lr": None,
                     "seed": seed},
            "test": {l: {"accuracy": acc, "macro_f1": acc / 2} for l in test}}


def test_grid_rows_carry_the_floor_of_their_own_train_and_test_pair():
    spec = task_spec("bible_genre")
    labels = ("a", "b")
    tr_en, te_sw, te_fr = _texts(["b", "b", "a"], "en"), _texts(["a", "b", "b", "b"], "sw"), _texts(["a"], "fr")
    p = Plan(spec, None, labels, {"en": (tr_en, [])}, {}, {"sw": (te_sw, []), "fr": (te_fr, [])}, [],
             {"en": ("sw", "fr")})
    fl = floors(p)
    assert fl[("en", "sw")]["accuracy"] == pytest.approx(0.75) and fl[("en", "fr")]["accuracy"] == 0.0
    summary = summarize(spec, [_result("en", ("sw", "fr"), 0.6)], fl)
    by_lang = {r["test_lang"]: r for r in summary["rows"]}
    assert by_lang["sw"]["majority_accuracy"] == pytest.approx(0.75)
    assert by_lang["fr"]["majority_accuracy"] == 0.0
    md = markdown(spec, summary)
    assert "majority class accuracy" in md and "| 75.0 |" in md and "| 0.0 |" in md
    assert "majority" not in markdown(spec, summarize(spec, [_result("en", ("sw",), 0.6)]))
