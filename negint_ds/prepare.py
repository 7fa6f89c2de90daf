"""``python -m negint_ds.prepare --config <recipe>``: build the recipe's data directory (see data/prepare.py).

Up-to-date data is left alone; data prepared from the same config whose sources or files changed is rebuilt.
Exit status: 0 built or up to date, 2 bad input (config, corpus, a foreign or differently-configured directory).
"""
from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, load_experiment
from .data.binarized import BinarizedError
from .data.prepare import DataPrepError, prepare_data
from .data.sources import CorpusError
from .data.stats import markdown_table
from .data.vocab import VocabularyError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m negint_ds.prepare", description=__doc__)
    p.add_argument("--config", required=True, help="recipe YAML/JSON path or built-in recipe name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.vocab.size=8000 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a directory prepared from a different data config (stale data from the same config is "
                        "rebuilt without it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_experiment(a.config, a.overrides)
        manifest = prepare_data(cfg.data, overwrite=a.overwrite, progress=not a.no_progress)
    except (ConfigError, DataPrepError, CorpusError, VocabularyError, BinarizedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nData in {cfg.data.dir} (vocabulary: {manifest['vocab']['size']} pieces)\n")
    print(markdown_table(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
