"""The rows of the paper's tables (Tables 2–5) as recipe changes: which languages a row trains on, and what it adds.

The language-specific rows extend the joint model of their group (JointPair in a pairs grid, Joint in a scaling
grid), exactly as the ``jointpair_en_sw_{ffn,attn,adpt,share_adpt,meta_adpt}`` recipes extend ``jointpair_en_sw``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One table row.

    Attributes:
        langs: ``mono`` (lg), ``pair`` (lg, en), ``tri`` (lg, tri[lg], en) or ``group`` (the scaling group's
            languages, en first).
        recipe: a mapping deep-merged onto the run's recipe.
        slug: the row's part of a run id (file-name safe).
    """

    langs: str
    slug: str
    recipe: dict = field(default_factory=dict)


ROWS: dict[str, Row] = {
    "Mono": Row("mono", "mono"),
    "JointPair": Row("pair", "jointpair"),
    "JointTri": Row("tri", "jointtri"),
    "Joint": Row("group", "joint"),
    "+ffn": Row("joint", "ffn", {"model": {"language_specific": ["ffn"]}}),
    "+attn": Row("joint", "attn", {"model": {"language_specific": ["attn"]}}),
    "+ln": Row("joint", "ln", {"model": {"language_specific": ["ln"]}}),
    "+adpt": Row("joint", "adpt", {"model": {"adapters": {"kind": "language"}}}),
    "+share adpt": Row("joint", "share_adpt", {"model": {"adapters": {"kind": "shared"}}}),
    "+meta adpt": Row("joint", "meta_adpt", {"model": {"adapters": {"kind": "language"}}, "meta": {"enabled": True}}),
}
#: Rows that only a pairs grid has, and the scaling grid's joint row.
GROUP_ROWS = ("Mono", "JointPair", "JointTri")
SCALING_ROWS = ("Joint",)


def row_languages(row: str, group: str, pairs_grid: bool, tri: dict[str, str], scaling_langs: list[str]) -> list[str]:
    """The language ids row ``row`` trains on in ``group`` (lg of a pair, or ``n<N>`` of a scaling grid).

    Order matters (language embedding ids): lg first, as the shipped ``jointpair_en_<lg>`` recipes.
    """
    kind = ROWS[row].langs
    if kind == "joint":
        kind = "pair" if pairs_grid else "group"
    if kind == "mono":
        return [group]
    if kind == "pair":
        return [group, "en"]
    if kind == "tri":
        return [group, tri[group], "en"]
    return list(scaling_langs)


def has_phi(recipe: dict) -> bool:
    """Whether a run's recipe has language-specific parameters φ (so the ZeRO-3 and memory notes apply)."""
    model = recipe.get("model", {})
    return bool(model.get("language_specific")) or model.get("adapters", {}).get("kind") == "language"


__all__ = ["GROUP_ROWS", "ROWS", "Row", "SCALING_ROWS", "has_phi", "row_languages"]
