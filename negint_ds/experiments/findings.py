"""The paper's qualitative claims (F1–F5), each judged on the experiment's numbers as reproduced / not reproduced /
inconclusive.

A comparison "A beats B" is **reproduced** when A − B (sign-adjusted so that positive is the claimed direction)
exceeds twice its standard error √(s_A²/n_A + s_B²/n_B), **not reproduced** when it is below −2 standard errors
(the opposite holds), and **inconclusive** in between, when either side has no spread (one seed), or when either
side's fine-tuned score is at its majority-class floor (:func:`floor_check`). The spread is
over pretraining seeds when there are ≥ 2, else over fine-tuning seeds (:mod:`.collect`), which understates the
pretraining variance; the report says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .collect import LOWER_IS_BETTER, Aggregate

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED = "reproduced", "not reproduced", "inconclusive", "not tested"
MIXED = "mixed"
#: A fine-tuned score at most this far (a fraction: 1 point) above its majority-class floor counts as at the floor.
FLOOR_MARGIN = 0.01


@dataclass
class Comparison:
    what: str
    a: str
    b: str
    diff: float
    se: float | None
    verdict: str
    detail: str


def compare(what: str, a: Aggregate | None, b: Aggregate | None, name_a: str, name_b: str,
            lower_is_better: bool | None = None) -> Comparison:
    """Judge "``a`` is better than ``b``" on one measure (see the module docstring)."""
    if a is None or b is None:
        missing = [n for n, x in ((name_a, a), (name_b, b)) if x is None]
        return Comparison(what, name_a, name_b, float("nan"), None, NOT_TESTED,
                          f"no result for {', '.join(missing)}")
    low = a.measure in LOWER_IS_BETTER if lower_is_better is None else lower_is_better
    diff = (b.mean - a.mean) if low else (a.mean - b.mean)
    nums = f"{name_a} {a.cell(digits=4)} vs {name_b} {b.cell(digits=4)}"
    if not (math.isfinite(a.mean) and math.isfinite(b.mean)):
        return Comparison(what, name_a, name_b, diff, None, INCONCLUSIVE, nums + " (non-finite)")
    if a.std is None or b.std is None:
        return Comparison(what, name_a, name_b, diff, None, INCONCLUSIVE, nums + "; no seed spread (one seed)")
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    verdict = REPRODUCED if diff > 2 * se else NOT_REPRODUCED if diff < -2 * se else INCONCLUSIVE
    return Comparison(what, name_a, name_b, diff, se, verdict,
                      f"{nums}; difference {diff:+.4f} in the claimed direction, 2 SE = {2 * se:.4f}")


def combine(parts: list[Comparison]) -> str:
    """One verdict for a claim made of several comparisons: not tested if none could be tested; not reproduced if
    any is significantly opposite; reproduced if every tested one is (``(partly tested)`` when some could not be
    tested); mixed when some are reproduced and others significantly opposite; else inconclusive."""
    tested = [c for c in parts if c.verdict != NOT_TESTED]
    if not tested:
        return NOT_TESTED
    if any(c.verdict == NOT_REPRODUCED for c in tested):
        return MIXED if any(c.verdict == REPRODUCED for c in tested) else NOT_REPRODUCED
    if all(c.verdict == REPRODUCED for c in tested):
        return REPRODUCED + (" (partly tested)" if len(tested) < len(parts) else "")
    return INCONCLUSIVE


def _probe_aggregate(rows: list[dict], label: str, measure: str) -> Aggregate | None:
    vals = np.array([r["cosine"] for r in rows], dtype=float)
    if not len(vals):
        return None
    std = float(vals.std(ddof=1)) if len(vals) > 1 else None
    return Aggregate("JointPair", "", measure, label, float(vals.mean()), std, len(vals), "probes")


def _downstream(aggs: dict, row: str, group: str, setting: str, lang: str) -> list[tuple[str, Aggregate]]:
    """(measure, aggregate) of ``row`` in ``group`` for every task/metric of ``setting`` tested in ``lang``."""
    return [(k[2], a) for k, a in aggs.items() if k[0] == row and k[1] == group and k[3] == lang
            and k[2].split("/")[1:2] == [setting]]


def floor_check(c: Comparison, a: Aggregate | None, b: Aggregate | None) -> Comparison:
    """``c`` made inconclusive when either side's mean is at most :data:`FLOOR_MARGIN` above its majority-class
    floor (or below it: a zero-shot head can predict a class that is rare in the test language).

    A fine-tuned head at the floor predicts the label prior whatever the encoder (:mod:`negint_ds.tasks.baseline`),
    so the difference measures which fine-tuning collapsed, not interference; bits per character still judge the
    encoders. Grids without a recorded floor are judged as before.
    """
    if c.verdict == NOT_TESTED:
        return c
    low = [f"{name} {100 * side.mean:.1f} is at or below the majority-class floor {100 * side.floor:.1f}"
           for name, side in ((c.a, a), (c.b, b))
           if side is not None and side.floor is not None and side.mean - side.floor <= FLOOR_MARGIN]
    if not low:
        return c
    return Comparison(c.what, c.a, c.b, c.diff, c.se, INCONCLUSIVE,
                      f"{c.detail}; {'; '.join(low)} (its classifier learned only the label prior)")


def _pairwise(aggs: dict, row_a: str, row_b: str, group: str, setting: str, lang: str, claim: str) -> list[Comparison]:
    b_by = dict(_downstream(aggs, row_b, group, setting, lang))
    out = []
    for measure, a in _downstream(aggs, row_a, group, setting, lang):
        b = b_by.get(measure)
        out.append(floor_check(compare(f"{claim}: {measure} in {lang} ({group})", a, b, row_a, row_b), a, b))
    if not out:  # name what is missing: row_a's results, and row_b's if it has none either
        any_b = next(iter(b_by.values()), None)
        out = [compare(f"{claim}: {setting} in {lang} ({group})", None, any_b, row_a, row_b)]
    return out


def _bpc(aggs: dict, row_a: str, row_b: str, lg: str) -> Comparison:
    """Judge "``row_a`` beats ``row_b``" on ``lg``'s bits per character (vocabulary-independent, lower is better)."""
    return compare(f"{row_a} > {row_b}: bits per character of {lg} ({lg})", aggs.get((row_a, lg, "bpc", lg)),
                   aggs.get((row_b, lg, "bpc", lg)), row_a, row_b)


def findings(spec, aggs: dict, probes: dict[str, list[dict]]) -> list[dict]:
    """F1–F5 for a pairs grid.

    Args:
        spec: the :class:`~.spec.ExperimentSpec`.
        aggs: :func:`.collect.aggregate`'s output.
        probes: group (lg) → whole-θ gradient-conflict rows of that group's JointPair runs (every seed and probe).

    Returns:
        ``[{"id", "claim", "verdict", "comparisons": [Comparison…]}]``.
    """
    low = {lg for lg, c in spec.languages.items() if c.max_train_sentences is not None}
    has = lambda row, lg: row in spec.rows and row in spec.pair_rows.get(lg, spec.rows)  # noqa: E731 — planned runs
    both = lambda a, b: [lg for lg in spec.pairs if has(a, lg) and has(b, lg)]  # noqa: E731
    high = [lg for lg in both("Mono", "JointPair") if lg not in low]
    out = []

    f1 = [c for lg in high for c in _pairwise(aggs, "Mono", "JointPair", lg, "within", lg, "Mono > JointPair")]
    f1 += [_bpc(aggs, "Mono", "JointPair", lg) for lg in high]
    out.append({"id": "F1", "claim": "Mono beats JointPair within-language on a high-resource language "
                                     "(negative interference)", "comparisons": f1})

    f2 = []
    for lg in [lg for lg in spec.pairs if has("JointPair", lg)]:
        rows = probes.get(lg, [])
        pair = _probe_aggregate([r for r in rows if r["pair"] == f"{lg}-en"], f"{lg}-en", "cosine")
        ctrl = _probe_aggregate([r for r in rows if r["pair"] == "en-en"], "en-en", "cosine")
        f2.append(compare(f"cos(g_{lg}, g_en) < cos(g_en, g_en') over probes ({lg})", ctrl, pair, "en–en", f"{lg}–en",
                          lower_is_better=False))
    # the pair of a language itself (fr), else its first variant (fr_l): a variant must not stand in for the full pair
    langs = {lg.split("_")[0]: lg for lg in reversed(spec.pairs)} | {lg: lg for lg in spec.pairs}
    if "ar" in langs and "fr" in langs:
        fr = _probe_aggregate([r for r in probes.get(langs["fr"], []) if r["pair"] == f"{langs['fr']}-en"],
                              "fr-en", "cosine")
        ar = _probe_aggregate([r for r in probes.get(langs["ar"], []) if r["pair"] == f"{langs['ar']}-en"],
                              "ar-en", "cosine")
        f2.append(compare("cos ar–en < cos fr–en over probes", fr, ar, "fr–en", "ar–en", lower_is_better=False))
    else:
        f2.append(compare("cos ar–en < cos fr–en (needs pairs ar and fr)", None, None, "fr–en", "ar–en"))
    out.append({"id": "F2", "claim": "gradients of lg and en are less similar than two batches of en; ar–en less "
                                     "than fr–en (Fig. 3)", "comparisons": f2})

    f3 = [c for lg in both("+ffn", "JointPair")
          for c in _pairwise(aggs, "+ffn", "JointPair", lg, "within", lg, "+ffn > JointPair")]
    f3 += [c for lg in both("+ffn", "JointPair") for c in _pairwise(aggs, "JointPair", "+ffn", lg, "zero_shot", lg,
                                                     "+ffn < JointPair")]
    out.append({"id": "F3", "claim": "+ffn helps within-language and hurts zero-shot transfer", "comparisons": f3})

    f4 = [c for lg in both("+meta adpt", "JointPair") for s in ("within", "zero_shot")
          for c in _pairwise(aggs, "+meta adpt", "JointPair", lg, s, lg, "+meta adpt > JointPair")]
    out.append({"id": "F4", "claim": "+meta adpt beats JointPair within-language and zero-shot", "comparisons": f4})

    f5 = []
    for lg in [lg for lg in both("JointPair", "Mono") if lg in low]:
        f5 += _pairwise(aggs, "JointPair", "Mono", lg, "within", lg, "JointPair > Mono")
        f5.append(_bpc(aggs, "JointPair", "Mono", lg))  # as for F1: Table 5's gain should show before fine-tuning
    if not f5:
        f5 = [compare("JointPair > Mono on a subsampled language (needs a pair whose language sets "
                      "max_train_sentences)", None, None, "JointPair", "Mono")]
    out.append({"id": "F5", "claim": "bilingual pretraining helps a subsampled low-resource language",
                "comparisons": f5})
    for f in out:
        f["verdict"] = combine(f["comparisons"])
    return out


def findings_markdown(items: list[dict]) -> str:
    lines = ["# Findings: the paper's claims on this experiment's numbers", "",
             "Verdict rule: the claimed difference must exceed 2 standard errors (reproduced) or fall below −2 "
             "(not reproduced); otherwise, or with one seed, inconclusive. n in brackets; 'ft' marks a spread over "
             "fine-tuning seeds of one pretrained model (it understates pretraining variance). With few seeds this is a "
             "screen, not a significance test: at n = 2 per side a two-sided 95% Welch t-test needs about 4.3–12.7 "
             "standard errors (1–2 degrees of freedom), so treat a 'reproduced' from 2 seeds as a direction worth "
             "more seeds. A fine-tuned score within 1 point of its majority-class floor (always predicting the "
             "training split's most frequent label) makes its comparison inconclusive: that head learned only the "
             "label prior.", "",
             "| claim | verdict |", "|---|---|"]
    lines += [f"| {f['id']}: {f['claim']} | **{f['verdict']}** |" for f in items]
    for f in items:
        lines += ["", f"## {f['id']}: {f['claim']} — {f['verdict']}", ""]
        lines += [f"- {c.what}: **{c.verdict}** — {c.detail}" for c in f["comparisons"]]
    return "\n".join(lines) + "\n"


__all__ = ["Comparison", "FLOOR_MARGIN", "combine", "compare", "findings", "findings_markdown", "floor_check"]
