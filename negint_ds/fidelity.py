"""``python -m negint_ds.fidelity``: how faithful is the meta hypergradient in a given precision, on real data?

Compares the finite-difference / exact hypergradient of φ_i, computed in a training dtype (bf16 by default)
with ``meta.precision`` fp32 and/or working, against an fp64 double-backward reference at the same point,
on batches of the recipe's prepared data (:mod:`negint_ds.meta.fidelity`). The model is a run's export
(``--run_dir``) or a fresh initialisation of the recipe's model (``--config``); dropout is off.

    python -m negint_ds.fidelity --config jointpair_en_sw_meta_adpt_demo --dtype bf16
    python -m negint_ds.fidelity --run_dir runs/jointpair_en_sw_meta_adpt_demo --emulate_tf32 --json fid.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

from .config import ConfigError, ExperimentConfig, from_mapping, load_experiment
from .data.vocab import N_SPECIAL, PAD_ID


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m negint_ds.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="recipe (name or path): a freshly initialised model of it")
    src.add_argument("--run_dir", help="a finished run: its exported model and config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (with --config)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="training precision to test")
    p.add_argument("--precision", default="fp32,working", help="comma list of meta.precision values")
    p.add_argument("--method", default="finite_difference,exact", help="comma list of meta.hypergradient values")
    p.add_argument("--fd_scheme", default="central,forward", help="comma list (finite differences only)")
    p.add_argument("--fd_scale", type=float, default=0.01, help="c in ε = c/‖v‖")
    p.add_argument("--beta", type=float, default=1e-4, help="β of the virtual step (default: the GPU configs' lr)")
    p.add_argument("--lang", help="the trained language i (default: the first)")
    p.add_argument("--train_sequences", type=int, default=8, help="sequences in the train batch of i")
    p.add_argument("--val_sequences", type=int, default=8, help="validation sequences per language")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--emulate_tf32", action="store_true", help="round fp32 matmul operands to TF32 (any device)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def _model_and_config(a):
    if a.run_dir:
        from .checkpoint import load_pretrained

        model, info = load_pretrained(a.run_dir, a.device)
        cfg = from_mapping(ExperimentConfig, info["config"], source=os.path.join(a.run_dir, "config.yaml"),
                           root="config")
        return model, cfg
    cfg = load_experiment(a.config, a.overrides)
    return None, cfg


def _batches(cfg: ExperimentConfig, manifest: dict, a, vocab_size: int, mask_id: int, lang: int):
    from .data.binarized import open_binarized
    from .meta import MetaInputs
    from .meta.val_batches import MetaValBatches

    streams = {split: [open_binarized(os.path.join(cfg.data.dir, manifest["languages"][l]["splits"][split]["file"]))
                       for l in cfg.lang_ids] for split in ("train", "valid")}
    common = dict(seq_len=cfg.train.seq_len, world_size=1, rank=0, mlm=cfg.mlm, vocab_size=vocab_size,
                  mask_id=mask_id, n_special=N_SPECIAL, seed=a.seed, names=cfg.lang_ids)
    train = MetaValBatches(streams["train"], "train", val_batch_size=a.train_sequences, micro=a.train_sequences,
                           purpose="fidelity-train", **common)
    val = MetaValBatches(streams["valid"], "valid", val_batch_size=a.val_sequences, micro=a.val_sequences,
                         purpose="fidelity-val", **common)
    to = lambda bs: [b.to(a.device) for b in bs]  # noqa: E731
    return MetaInputs(to(train.batches(0, lang)), [(j, to(val.batches(0, j))) for j in range(len(cfg.lang_ids))])


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print a markdown table. Returns 0, or 2 on bad input."""
    from .data.prepare import DataPrepError, check_prepared
    from .data.vocab import Vocabulary, VocabularyError
    from .meta.fidelity import DTYPES, measure, references
    from .model import build_model

    a = _parse(argv)
    try:
        model, cfg = _model_and_config(a)

        manifest = check_prepared(cfg.data, recipe=a.config)
        vocab = Vocabulary(os.path.join(cfg.data.dir, manifest["vocab"]["file"]))
        if model is None:
            torch.manual_seed(a.seed)
            model = build_model(cfg.model, vocab.size, len(cfg.lang_ids), PAD_ID, cfg.lang_ids).to(a.device)
        lang = cfg.lang_ids.index(a.lang) if a.lang else 0
    except (ConfigError, DataPrepError, VocabularyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.eval()  # no dropout: every pass, reference included, sees the same function
    inputs = _batches(cfg, manifest, a, vocab.size, vocab.mask_id, lang)
    refs = references(model, lang, inputs, a.beta)
    rows = []
    for prec, method, scheme in itertools.product(a.precision.split(","), a.method.split(","),
                                                  a.fd_scheme.split(",")):
        if method == "exact" and scheme != a.fd_scheme.split(",")[0]:
            continue  # the scheme is a finite-difference option
        r = measure(model, lang, inputs, a.beta, DTYPES[a.dtype], prec, method, a.fd_scale, scheme, a.emulate_tf32,
                    refs=refs)
        rows.append({"precision": prec, "method": method, "fd_scheme": scheme if method != "exact" else None, **r})
    lines = [f"hypergradient fidelity: {cfg.name}, language {cfg.lang_ids[lang]}, {a.dtype} module, β={a.beta:g}, "
             f"c={a.fd_scale:g}{', TF32 emulated' if a.emulate_tf32 else ''}; reference: fp64 double backward "
             f"(second-order share ‖βHv‖/‖∂φF‖ = {rows[0]['second_order_share']:.3g})", "",
             "| precision | method | scheme | whole: cos / rel. err | second order: cos / rel. err | "
             "β-dependent part: cos / rel. err | θ' changed | θ⁺ changed |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "–" if x is None else f"{x:.3g}"  # noqa: E731
    for r in rows:
        parts = " | ".join(f"{r[k]['cosine']:.4f} / {r[k]['rel_error']:.3g}" for k in ("whole", "second_order",
                                                                                       "beta_part"))
        lines.append(f"| {r['precision']} | {r['method']} | {r['fd_scheme'] or '–'} | {parts} | "
                     f"{fmt(r['virtual_changed_fraction'])} | {fmt(r['changed_fraction'])} |")
    print("\n".join(lines))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
