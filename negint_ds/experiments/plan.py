"""Expand a spec into runs and stages, check everything before anything runs, and estimate the cost.

A **run** is one pretraining (row, group, seed) with its resolved recipe, run directory and stages; a **stage** is
one command (prepare, pretrain, finetune, bpc, masks, mask_report) with the files that say it has finished and
the file that says it was interrupted (then it is continued with ``--resume``). The same stages drive the local
executor (:mod:`.execute`) and the SLURM scripts (:mod:`.cluster`), so both skip and resume alike.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

from ..analysis.mask_layout import SIMILARITY_CSV, SUMMARY_FILE, mask_run_dir
from ..config.deepspeed import read_ds_config
from ..config.experiment import ExperimentConfig, _deep_merge, _resolve_extends, recipe_path
from ..config.loader import ConfigError, apply_overrides, from_mapping, to_mapping
from .rows import ROWS, has_phi, row_languages
from .spec import ExperimentSpec

#: The estimate's calibration: the Quickstart demo (``jointpair_en_sw_demo``, 32 × 128 tokens per step) trained
#: at about 9,000 tokens/s on the 2-core CPU machine (benchmarks/RESULTS.md, 2026-11-24).
CALIBRATION_RECIPE, CALIBRATION_TOKENS_PER_S = "jointpair_en_sw_demo", 9000.0
#: Measured step-time multipliers (README "Fidelity and cost": meta step vs the joint +adpt step, CPU fp32).
META_FACTOR = {"finite_difference": 4.4, "exact": 6.3}
#: Seconds per launched process before its first step (torch + DeepSpeed imports, engine set-up).
STARTUP_S = 15.0


@dataclass
class Stage:
    """One command of a run.

    Attributes:
        name: ``prepare``, ``pretrain``, ``finetune``, ``bpc``, ``masks`` or ``mask_report``.
        script: a path under the repository (``launchers/…``) or ``-m module``.
        args: its arguments, without the resume flag.
        distributed: started through the launcher prefix (deepspeed / srun) rather than plain ``python``.
        done: files whose existence means the stage finished.
        resume_if: a file whose existence (without ``done``) means it was interrupted: add ``--resume``.
        estimate_s: estimated seconds on the machine the estimate is calibrated for.
    """

    name: str
    script: str
    args: list[str]
    distributed: bool = False
    done: list[str] = field(default_factory=list)
    resume_if: str | None = None
    estimate_s: float = 0.0

    def argv(self, resume: bool) -> list[str]:
        script = self.script.split() if self.script.startswith("-m ") else [os.path.join(REPO, self.script)]
        return script + self.args + (["--resume"] if resume else [])


@dataclass
class Run:
    """One pretraining run and its stages (``kind``: ``grid`` for the table rows, ``cost`` for the cost sweep)."""

    id: str
    row: str
    group: str
    seed: int
    langs: list[str]
    recipe: dict
    recipe_file: str
    run_dir: str
    data_dir: str
    stages: list[Stage]
    kind: str = "grid"
    variant: str = ""


@dataclass
class Plan:
    spec: ExperimentSpec
    spec_file: str
    out_dir: str
    runs: list[Run]
    #: data dir → the recipe file of its first run (what ``prepare`` is called with).
    prepare: dict[str, str]
    ds_config: dict


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _repo_path(path: str) -> str:
    """``path`` as given when it exists, else relative to the checkout (``ds_configs/…`` from any directory)."""
    return os.path.abspath(path if os.path.exists(path) or os.path.isabs(path) else os.path.join(REPO, path))


def _slug_langs(langs: list[str]) -> str:
    return "-".join(langs)


def _data_dir(root: str, data: dict) -> str:
    """``<root>/<languages>-<sha256 of the data section>[:8]``: runs with the same data share it."""
    key = json.dumps({k: v for k, v in data.items() if k != "dir"}, sort_keys=True)
    return os.path.join(root, f"{_slug_langs(list(data['languages']))}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")


def groups(spec: ExperimentSpec) -> list[tuple[str, list[str]]]:
    """(group name, scaling languages) in spec order: ``(lg, [])`` per pair, or ``(n<N>, [en, pool…])`` per count."""
    if spec.scaling is None:
        return [(lg, []) for lg in spec.pairs]
    return [(f"n{n}", ["en"] + spec.scaling.pool[: n - 1]) for n in spec.scaling.counts]


def _recipe(spec: ExperimentSpec, base: dict, row: str, langs: list[str], seed: int, run_id: str,
            extra: list[str]) -> dict:
    r = copy.deepcopy(base)
    languages = {}
    for l in langs:
        entry = to_mapping(spec.languages[l]) if l in spec.languages else {"source": "bible"}
        entry = {k: v for k, v in entry.items() if v is not None and not (k == "hf_split" and v == "train")
                 and not (k == "text_field" and v == "text")}
        if spec.scaling is not None and spec.scaling.max_train_sentences is not None:
            entry["max_train_sentences"] = spec.scaling.max_train_sentences
        languages[l] = entry
    r.setdefault("data", {})["languages"] = languages
    r = _deep_merge(r, copy.deepcopy(ROWS[row].recipe))
    r.pop("extends", None)
    r["name"] = run_id
    r["description"] = f"{spec.name}: {row}, languages {'+'.join(langs)}, seed {seed}"
    r.setdefault("train", {})["seed"] = seed
    apply_overrides(r, list(spec.set) + list(spec.row_set.get(row, [])) + list(extra), source=f"spec {spec.name}")
    gc = spec.analyses.grad_conflict
    if gc.enabled and len(langs) > 1 and (gc.rows is None or row in gc.rows):
        r.setdefault("analysis", {})["grad_conflict"] = {"enabled": True, "every": gc.every,
                                                           "sequences": gc.sequences, "micro_batch": gc.micro_batch}
    r["data"]["dir"] = os.path.abspath(_data_dir(spec.data_root, r["data"]))
    return r


def _flops_per_token(cfg: ExperimentConfig) -> float:
    """Training FLOPs per input token: 6 × (non-embedding parameters touched per token) plus the MLM head on the
    masked fraction only and the attention scores (Kaplan et al. 2020's 6N + 12·L·T·d counting)."""
    m = cfg.model
    per_layer = 4 * m.dim * m.dim + 2 * m.dim * m.ffn_dim
    if m.adapters.kind != "none":
        b = m.adapters.bottleneck or m.dim // 4
        per_layer += len(m.adapters.placement) * 2 * m.dim * b
    vocab = m.vocab_size or cfg.data.vocab.size
    return (6 * m.layers * per_layer + 6 * m.dim * vocab * cfg.mlm.mask_prob
            + 12 * m.layers * cfg.train.seq_len * m.dim)


def _calibrated_rate() -> float:
    """FLOP/s of the calibration machine (see :data:`CALIBRATION_TOKENS_PER_S`)."""
    return CALIBRATION_TOKENS_PER_S * _flops_per_token_demo()


def _ft_seeds(sets: list[str]) -> int:
    for s in sets:
        k, _, v = s.partition("=")
        if k.strip() == "seeds":
            return max(1, len(re.findall(r"-?\d+", v)))
    return 3


def _estimates(cfg: ExperimentConfig, ds: dict, world: int, rate: float, spec: ExperimentSpec) -> dict[str, float]:
    """Rough seconds per stage of one run (see the module constants); what ``--dry_run`` adds up."""
    micro = ds.get("train_micro_batch_size_per_gpu", 1)
    accum = ds.get("gradient_accumulation_steps", 1)
    seqs = micro * accum * world
    tc, fpt = cfg.train, _flops_per_token(cfg)
    factor = META_FACTOR[cfg.meta.hypergradient] if cfg.meta.enabled else 1.0
    gc = cfg.analysis.grad_conflict
    if gc.enabled:  # one backward over `sequences` windows per draw (pairs' languages + controls) every `every` steps
        draws = 2 * len(cfg.data.languages)
        factor += draws * gc.sequences / (gc.every * seqs)
    train = tc.max_steps * seqs * tc.seq_len * fpt * factor / rate
    evals = tc.max_steps // tc.eval_every + 2
    evaluation = evals * len(cfg.data.languages) * (tc.eval_sequences or 512) * tc.seq_len * fpt / 3 / rate
    demo_ft = 25.0 * fpt / _flops_per_token_demo()  # one built-in grid × fine-tuning seed at demo size: ~25 s
    others = max(1, len(cfg.data.languages) - 1)
    task = spec.finetune.task if spec.finetune else "builtin"
    if task in ("bible_retrieval", "tatoeba"):  # no training: encode the test verses of each language
        finetune = STARTUP_S + 10.0 * others * fpt / _flops_per_token_demo()
    else:  # builtin: within-language per lg and zero-shot from en; a named task: one grid
        grids = 2 * others if task == "builtin" else others
        finetune = STARTUP_S + grids * _ft_seeds(spec.finetune.set if spec.finetune else []) * demo_ft
    return {"prepare": 60.0, "pretrain": STARTUP_S + train + evaluation, "finetune": finetune,
            "bpc": STARTUP_S + len(cfg.data.languages) * spec.analyses.bpc.max_sentences * 35 * 40 * fpt / 3 / rate,
            "masks": STARTUP_S + 2 * len(spec.analyses.masks.seeds) * spec.analyses.masks.steps * seqs * tc.seq_len
            * fpt / 2 / rate, "mask_report": 10.0}


@functools.lru_cache(maxsize=1)
def _flops_per_token_demo() -> float:
    from ..config.experiment import load_experiment

    return _flops_per_token(load_experiment(CALIBRATION_RECIPE))


def _stages(spec: ExperimentSpec, run: Run, ds_file: str, est: dict[str, float], cost_run: bool) -> list[Stage]:
    d = run.run_dir
    st = [Stage("pretrain", "launchers/pretrain.py",
                ["--deepspeed_config", ds_file, "--config", run.recipe_file, "--run_dir", d, "--no_progress"],
                distributed=True, done=[os.path.join(d, "final_ppl.json")], resume_if=os.path.join(d, "config.yaml"),
                estimate_s=est["pretrain"])]
    if cost_run:
        return st
    ft = spec.finetune
    if ft is not None and (ft.rows is None or run.row in ft.rows):
        out = os.path.join(d, "downstream", ft.task)
        args = ["--pretrained", d, "--task", ft.task, "--run_dir", out, "--no_progress"]
        args += [x for s in ft.set for x in ("--set", s)]
        st.append(Stage("finetune", "launchers/finetune.py", ["--deepspeed_config", ds_file] + args,
                        distributed=True, done=[os.path.join(out, "tables.md")],
                        resume_if=os.path.join(out, "finetune.json"), estimate_s=est["finetune"]))
    b = spec.analyses.bpc
    if b.enabled and (b.rows is None or run.row in b.rows):
        out = os.path.join(d, "analysis", "bpc")
        st.append(Stage("bpc", "launchers/analyze.py", ["bpc", "--runs", d, "--max_sentences", str(b.max_sentences),
                                                       "--out_dir", out], done=[os.path.join(out, "bpc.json")],
                        estimate_s=est["bpc"]))
    m = spec.analyses.masks
    if m.enabled and run.row in m.rows and len(run.langs) > 1 and (m.pairs is None or run.group in m.pairs):
        report = os.path.join(d, "analysis", SIMILARITY_CSV)
        lg = run.langs[0]
        # the masks command's own completion markers (each mask run writes its summary last); the report's CSV
        # belongs to the mask_report stage
        summaries = [os.path.join(mask_run_dir(os.path.join(d, "analysis", "masks"), x, s), SUMMARY_FILE)
                     for x in (lg, "en") for s in m.seeds]
        st.append(Stage("masks", "launchers/analyze.py",
                        ["masks", "--deepspeed_config", ds_file, "--run_dir", d, "--langs", lg, "en", "--seeds",
                         *map(str, m.seeds), "--set", f"steps={m.steps}", "--no_progress"],
                        distributed=True, done=summaries, estimate_s=est["masks"]))
        st.append(Stage("mask_report", "launchers/analyze.py", ["mask_report", "--run_dir", d, "--pairs", f"{lg}-en"],
                        done=[report], estimate_s=est["mask_report"]))
    return st


def _check_tasks(spec: ExperimentSpec, run: Run, cfg: ExperimentConfig, problems: list[str]) -> None:
    """A group without data for the spec's task is a named problem (before anything runs)."""
    ft = spec.finetune
    if ft is None or (ft.rows is not None and run.row not in ft.rows):
        return
    from ..tasks.config import FinetuneConfig
    from ..tasks.examples import TaskError
    from ..tasks.registry import BUILTIN, data_languages, task_spec

    names = list(BUILTIN) if ft.task == "builtin" else [ft.task]
    try:
        tspecs = [task_spec(n) for n in names]
    except TaskError as e:
        problems.append(f"finetune.task: {e}")
        return
    try:
        fcfg = from_mapping(FinetuneConfig, apply_overrides({"task": names[0]}, list(ft.set)), source="finetune.set")
    except ConfigError as e:
        problems += [f"finetune.set: {p}" for p in e.problems]
        return
    targets = [l for l in run.langs if l != "en"] or run.langs
    for lg in targets:
        have = [t.name for t in tspecs if lg in data_languages(t, fcfg, list(run.langs), cfg.data)]
        if not have:
            problems.append(f"finetune.task: {ft.task} has no data for {lg!r} (row {run.row}, group {run.group}; "
                            f"language source {cfg.data.languages[lg].source})")
    if ft.task != "builtin":
        t = tspecs[0]
        if "within" not in t.settings and "zero_shot" in t.settings and "en" not in run.langs:
            problems.append(f"finetune.task: {t.name} is zero-shot from en; row {run.row} has no en")


def expand(spec: ExperimentSpec, spec_file: str, out_dir: str, world: int = 1, rate: float | None = None) -> Plan:
    """Every run of the spec, with resolved and validated recipes and their stages. Writes nothing.

    Args:
        world: processes per run (the DeepSpeed batch arithmetic and the estimate use it).
        rate: FLOP/s for the estimate (None: calibrated on the 2-core CPU machine).

    Raises:
        ConfigError: every problem of every run at once (unknown base recipe, a recipe field the spec's ``set``
            gets wrong, a language code that is not ISO 639-1, a task without data for a group, a DeepSpeed config
            that does not exist), each naming the run.
    """
    problems: list[str] = []
    try:
        base = _resolve_extends(recipe_path(spec.base), [])
    except ConfigError as e:
        raise ConfigError([f"base: {p}" for p in e.problems], source=spec_file) from None
    ds_file = _repo_path(spec.ds_config)
    try:
        ds = read_ds_config(ds_file)
    except (ConfigError, OSError, ValueError) as e:
        raise ConfigError([f"ds_config: {e}"], source=spec_file) from None
    rate = rate or _calibrated_rate()
    out_dir = os.path.abspath(out_dir)
    runs: list[Run] = []
    jobs = [(row, g, sl, seed, [], "", "grid") for g, sl in groups(spec) for row in spec.rows
            if row in spec.pair_rows.get(g, spec.rows) for seed in spec.seeds]
    if spec.cost.enabled:
        counts = spec.cost.counts or spec.scaling.counts
        pool = spec.scaling.pool
        for n in counts:
            if not 2 <= n <= len(pool) + 1:
                problems.append(f"cost.counts: {n} must be between 2 and 1 + len(scaling.pool) = {len(pool) + 1}")
                continue
            for row in spec.cost.rows or spec.rows:
                sets = [f"train.max_steps={spec.cost.steps}", f"train.eval_every={10 * spec.cost.steps}",
                        f"train.save_every={10 * spec.cost.steps}", "train.eval_sequences=16",
                        f"train.log_every={max(1, spec.cost.steps // 4)}"]
                is_meta = ROWS[row].recipe.get("meta", {}).get("enabled")
                # a meta row's plain cost run is the full validation sum, whatever K the grid row uses
                jobs.append((row, f"n{n}", ["en"] + pool[: n - 1], spec.seeds[0],
                             sets + (["meta.langs_per_step=null"] if is_meta else []), "", "cost"))
                if is_meta:
                    for k in spec.cost.langs_per_step:
                        if k < n:
                            jobs.append((row, f"n{n}", ["en"] + pool[: n - 1], spec.seeds[0],
                                         sets + [f"meta.langs_per_step={k}"], f"K={k}", "cost"))
    prepare: dict[str, str] = {}
    for row, g, sl, seed, extra, variant, kind in jobs:
        langs = row_languages(row, g, spec.scaling is None, spec.tri, sl)
        rid = f"{ROWS[row].slug}-{g}-s{seed}" if kind == "grid" else \
            f"cost-{ROWS[row].slug}-{g}" + (f"-k{variant[2:]}" if variant else "")
        try:
            recipe = _recipe(spec, base, row, langs, seed, rid, extra)
        except ConfigError as e:
            problems += [f"run {rid}: {p}" for p in e.problems]
            continue
        try:
            cfg = from_mapping(ExperimentConfig, recipe, source=f"run {rid}", root="config")
        except ConfigError as e:
            problems += [f"run {rid} (row {row}, languages {'+'.join(langs)}): {p}" for p in e.problems]
            continue
        run = Run(rid, row, g, seed, langs, recipe, os.path.join(out_dir, "recipes", f"{rid}.yaml"),
                  os.path.join(out_dir, "runs", rid), recipe["data"]["dir"], [], kind, variant)
        gcc = cfg.analysis.grad_conflict
        micro = ds.get("train_micro_batch_size_per_gpu", 1)
        if gcc.enabled and gcc.micro_batch is None and gcc.sequences % micro:
            problems.append(f"run {rid}: analyses.grad_conflict.sequences={gcc.sequences} is not a multiple of the "
                            f"training micro-batch {micro} of {spec.ds_config}; set analyses.grad_conflict.micro_batch "
                            f"(a divisor of sequences)")
        if has_phi(recipe) and ds.get("zero_optimization", {}).get("stage", 0) == 3:
            problems.append(f"run {rid}: ZeRO-3 partitions every module parameter and is refused for rows with φ "
                            f"({row}); use a ZeRO 0–2 ds_config")
        if kind == "grid":
            _check_tasks(spec, run, cfg, problems)
        run.stages = _stages(spec, run, ds_file, _estimates(cfg, ds, world, rate, spec),
                             kind == "cost")
        prepare.setdefault(run.data_dir, run.recipe_file)
        runs.append(run)
    if problems:
        raise ConfigError(problems, source=spec_file)
    return Plan(spec, spec_file, out_dir, runs, prepare, ds)


def parameter_counts(recipe: dict) -> dict[str, int]:
    """θ and per-language φ parameter counts of a run's model, built on PyTorch's ``meta`` device (no memory), with
    the bytes of one language's φ on every rank: fp32 weights + gradient + AdamW's two moments. φ's optimiser
    (:mod:`negint_ds.phi_optim`) is outside DeepSpeed, so no ZeRO stage partitions it (ZeRO-3 is refused with φ);
    θ's optimiser states are what ZeRO 1–2 partition.

    Returns:
        ``{"theta", "phi_per_lang", "langs", "phi_bytes_per_lang", "phi_bytes_total"}``.
    """
    import torch

    from ..data.vocab import PAD_ID
    from ..model import build_model
    from ..params import split_parameters

    cfg = from_mapping(ExperimentConfig, recipe, root="config")
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.model.vocab_size or cfg.data.vocab.size, len(cfg.lang_ids), PAD_ID,
                            cfg.lang_ids)
    split = split_parameters(model, len(cfg.lang_ids))
    phi = [sum(p.numel() for p in d.values()) for d in split.phi]
    per = max(phi) if phi else 0
    return {"theta": sum(p.numel() for p in split.theta.values()), "phi_per_lang": per, "langs": len(cfg.lang_ids),
            "phi_bytes_per_lang": 16 * per, "phi_bytes_total": 16 * sum(phi)}


__all__ = ["CALIBRATION_RECIPE", "CALIBRATION_TOKENS_PER_S", "Plan", "Run", "Stage", "expand", "groups",
           "parameter_counts"]
