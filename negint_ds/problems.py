"""One problem found by a pre-flight check, tagged with a category that callers and tests can tell apart.

The real run raises its usual error at the first failing check; ``--dry_run`` collects every problem as
a :class:`Problem` so that, say, a batch-layout problem still shows when the data is not prepared yet.
"""
from __future__ import annotations

from dataclasses import dataclass

#: ``config``: recipe, DeepSpeed config and their cross-checks; ``hardware``: the config asks for what the
#: target device lacks (fp16/bf16 without a GPU); ``data``: data directory, vocabulary, token files and
#: their lengths; ``run_dir``: the run directory cannot be used as asked.
CATEGORIES = ("config", "hardware", "data", "run_dir")


@dataclass(frozen=True)
class Problem:
    """A reason the run would be refused.

    Attributes:
        category: one of :data:`CATEGORIES`.
        message: what is wrong and how to fix it, naming the field or file.
        source: the file or origin the message refers to (a recipe, a DeepSpeed config, ``command line``);
            empty when the message names everything itself.
    """

    category: str
    message: str
    source: str = ""

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown problem category {self.category!r}; expected one of {CATEGORIES}")

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"[{self.category}] {where}{self.message}"
