"""One fine-tuning cell: (setting, training language, batch size, learning rates, seed), with DeepSpeed.

Appendix A protocol: fine-tune all layers (φ included unless frozen) for the task's epochs, save a checkpoint
after each epoch, evaluate the dev set after each epoch and keep the best epoch's weights; the test sets are
scored once, with the best epoch's weights.

Determinism, world-size invariance and exact resume:

* Epoch e visits the training rows in the permutation drawn from seed (seed, "order", e); step t's global batch is
  rows [t·B, (t+1)·B) of it (the last incomplete batch is dropped). Micro-batch m = a·W + rank of step t (a the
  accumulation step) takes rows [m·b, (m+1)·b): the same micro-batches for any world size W with W·A·b = B.
* Before each micro-batch forward the RNG is seeded with (seed, "dropout", e, t, m), so dropout masks depend on
  the micro-batch, not on the process or on what ran before: a run resumed at an epoch boundary continues
  exactly, and 2 processes draw what 1 process with 2 accumulation steps draws.
* The loss is the sum over the micro-batch's labels scaled by W·A / (labels in the global batch)
  (:class:`TaskModel`), so the gradient is the global batch's mean whatever the layout.

Files in the cell directory: ``state.json`` (epochs done, dev history; written after each epoch's checkpoint),
``checkpoints/epoch_<e>/`` (DeepSpeed: module, optimizer, scheduler; the latest one is kept), ``best.safetensors``
(fp32 weights of the best dev epoch), ``result.json`` (written last: marks the cell finished).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..atomic import atomic_write_json
from ..config.deepspeed import precision, zero_stage
from ..params import split_parameters
from ..seeding import derive_seed
from ..train.dist import all_reduce_sum, on_rank0
from .encode import Encoded, pad_batch
from .evaluate import predict
from .examples import TaskError
from .task_model import TaskModel, n_loss_terms

log = logging.getLogger(__name__)

RESULT = "result.json"
STATE = "state.json"
BEST = "best.safetensors"


@dataclass(frozen=True)
class Cell:
    """One grid cell. ``train_lang`` is fine-tuned on and its dev set selects the epoch; ``test_langs`` are
    scored at the end."""

    setting: str
    train_lang: str
    test_langs: tuple[str, ...]
    batch_size: int
    lr: float
    classifier_lr: float | None
    seed: int

    @property
    def name(self) -> str:
        """Directory name, e.g. ``within-sw-bs32-lr0.0001-s1``."""
        clr = f"-clr{self.classifier_lr:g}" if self.classifier_lr is not None else ""
        return f"{self.setting}-{self.train_lang}-bs{self.batch_size}-lr{self.lr:g}{clr}-s{self.seed}"

    @property
    def hparams(self) -> tuple:
        """The cell's hyper-parameters without the seed (the selection groups seeds by them)."""
        return (self.batch_size, self.lr, self.classifier_lr)


def batch_layout(batch_size: int, world: int, micro: int | None) -> tuple[int, int]:
    """(micro-batch per rank, accumulation steps) for a global batch of ``batch_size`` rows on ``world`` ranks.

    Raises:
        TaskError: the batch cannot be shared out evenly.
    """
    micro = micro if micro is not None else batch_size // world
    if micro < 1 or batch_size % (micro * world):
        raise TaskError(f"batch size {batch_size} cannot be split into micro-batches of {micro} on {world} "
                        f"ranks; choose batch_sizes divisible by ranks × micro_batch")
    return micro, batch_size // (micro * world)


def linear_schedule(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0 (BERT/XTREME
    fine-tuning)."""
    warm = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_cell(pre, spec, cfg, cell: Cell, n_labels: int, train_rows: list[Encoded], dev_eval, test_evals: dict,
             ds_config: dict, cell_dir: str, identity: dict, rank: int = 0, world: int = 1,
             progress: bool = False) -> dict:
    """Fine-tune and score one cell; resumable at epoch boundaries; skipped when already finished.

    Args:
        pre: the :class:`~negint_ds.analysis.pretrained.Pretrained` model (not modified).
        spec: the :class:`~negint_ds.tasks.registry.TaskSpec`.
        cfg: the :class:`~negint_ds.tasks.config.FinetuneConfig`.
        n_labels: classes of the head (ignored for QA).
        train_rows: encoded training rows of ``cell.train_lang``.
        dev_eval: callable(model, device, phi_lang) → scores dict of the dev set (selection uses
            ``spec.metric``).
        test_evals: test language → callable(model, device, phi_lang) → scores.
        ds_config: the DeepSpeed config (its optimizer/scheduler are replaced: AdamW with per-group lrs and the
            linear schedule).
        identity: what the result depends on; a finished cell with another identity is an error.

    Returns:
        The cell's result (``result.json``): identity, dev history per epoch, best epoch and dev score, test
        scores per language, wall time.

    Raises:
        TaskError: a finished cell with other settings in ``cell_dir``; ZeRO-3; a batch that does not divide.
    """
    import deepspeed

    done = _read_json(os.path.join(cell_dir, RESULT))
    if done is not None:
        if done.get("identity") != identity:
            raise TaskError(f"{cell_dir} holds a finished cell with other settings; use another run directory")
        return done
    if zero_stage(ds_config) == 3:
        raise TaskError("ZeRO stage 3 is not supported for fine-tuning: the best epoch's weights are copied from "
                        "the module, which stage 3 partitions; use stage 0, 1 or 2")
    t0 = time.time()
    micro, accum = batch_layout(cell.batch_size, world, cfg.micro_batch)
    steps_per_epoch = len(train_rows) // cell.batch_size
    if steps_per_epoch < 1:
        raise TaskError(f"{cell.train_lang}: {len(train_rows)} training rows are fewer than one batch of "
                        f"{cell.batch_size}")
    epochs = cfg.epochs or spec.epochs
    total = steps_per_epoch * epochs

    lang_index = {l: i for i, l in enumerate(pre.lang_ids)}
    head_gen = torch.Generator().manual_seed(derive_seed(cell.seed, "head"))
    model = TaskModel(copy.deepcopy(pre.model.encoder), spec.kind, n_labels, cfg.head_dropout, cfg.pool, head_gen)
    model.train()
    split = split_parameters(model.encoder, len(pre.lang_ids))
    if cfg.freeze_phi:
        for group in split.phi:
            for p in group.values():
                p.requires_grad_(False)
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    head = list(model.head.parameters())
    clr = cell.classifier_lr if cell.classifier_lr is not None else cell.lr
    opt = torch.optim.AdamW([{"params": enc, "lr": cell.lr}, {"params": head, "lr": clr}], lr=cell.lr,
                            weight_decay=cfg.weight_decay, eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, cfg.warmup_fraction))
    ds = copy.deepcopy(ds_config)
    for k in ("optimizer", "scheduler", "tensorboard", "train_batch_size"):
        ds.pop(k, None)
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
              train_batch_size=cell.batch_size)
    ds.setdefault("steps_per_print", 10 ** 9)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds)
    try:
        return _fit(engine, pre, spec, cfg, cell, train_rows, dev_eval, test_evals, cell_dir, identity, rank, world,
                    micro, accum, epochs, steps_per_epoch, lang_index, t0, ds, progress)
    finally:
        if hasattr(engine, "destroy"):
            engine.destroy()


def _fit(engine, pre, spec, cfg, cell, train_rows, dev_eval, test_evals, cell_dir, identity, rank, world, micro,
         accum, epochs, steps_per_epoch, lang_index, t0, ds, progress) -> dict:
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    device = engine.device
    module = engine.module
    ckpt_root = os.path.join(cell_dir, "checkpoints")
    state = _read_json(os.path.join(cell_dir, STATE)) or {"epochs_done": 0, "dev": [], "best_epoch": None,
                                                          "best_dev": None}
    if state["epochs_done"]:
        tag = f"epoch_{state['epochs_done']}"
        path, _ = engine.load_checkpoint(ckpt_root, tag=tag)
        if path is None:
            raise TaskError(f"{cell_dir}: state.json says {state['epochs_done']} epochs are done but checkpoint "
                            f"{tag} cannot be loaded; delete the cell directory to redo the cell")
        log.info("%s: resuming after epoch %d", cell.name, state["epochs_done"])
    phi_src = None
    G = cell.batch_size
    for epoch in range(state["epochs_done"], epochs):
        order = np.random.default_rng(derive_seed(cell.seed, "order", epoch)).permutation(len(train_rows))
        bar = tqdm(range(steps_per_epoch), desc=f"{cell.name} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or rank != 0)
        losses = []
        for t in bar:
            glob = order[t * G:(t + 1) * G]
            n_terms = sum(n_loss_terms(spec.kind, train_rows[i].labels[None] if spec.kind != "token"
                                       else train_rows[i].labels) for i in glob)
            scale = torch.tensor(world * accum / max(n_terms, 1), dtype=torch.float32, device=device)
            step_loss = 0.0
            for a in range(accum):
                m = a * world + rank
                rows = [train_rows[i] for i in glob[m * micro:(m + 1) * micro]]
                b = pad_batch(rows, spec.kind)
                lang = torch.tensor([lang_index[r.lang] for r in rows], dtype=torch.int64, device=device)
                torch.manual_seed(derive_seed(cell.seed, "dropout", epoch, t, m))
                loss = engine(torch.from_numpy(b["ids"]).to(device), torch.from_numpy(b["pad"]).to(device), lang,
                              torch.from_numpy(b["labels"]).to(device), scale)
                engine.backward(loss)
                engine.step()
                step_loss += float(loss.detach()) / (world * accum)
            losses.append(step_loss)
        loss_sum, = all_reduce_sum([float(np.sum(losses))], torch.device("cpu") if not dist.is_initialized()
                                   or dist.get_backend() != "nccl" else device)
        dev = dev_eval(module, device, phi_src)
        score = dev[spec.metric]
        state["dev"].append({"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch, **dev})
        better = state["best_dev"] is None or score > state["best_dev"]
        if better:
            state["best_dev"], state["best_epoch"] = score, epoch + 1
        # Checkpoint first, then state.json: a crash in between leaves state pointing at the previous epoch,
        # whose checkpoint is deleted only after the new state is written.
        engine.save_checkpoint(ckpt_root, tag=f"epoch_{epoch + 1}")

        def write(state=state, better=better, epoch=epoch):
            if better:
                tmp = os.path.join(cell_dir, f".{BEST}.tmp")
                save_file({k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}, tmp)
                os.replace(tmp, os.path.join(cell_dir, BEST))
            state["epochs_done"] = epoch + 1
            atomic_write_json(os.path.join(cell_dir, STATE), state)
            old = os.path.join(ckpt_root, f"epoch_{epoch}")
            if epoch > 0 and os.path.isdir(old):
                shutil.rmtree(old)

        on_rank0(write, rank, world)
        if dist.is_initialized():
            dist.barrier()
        state["epochs_done"] = epoch + 1
        log.info("%s epoch %d/%d: train loss %.4f, dev %s %.4f%s", cell.name, epoch + 1, epochs,
                 state["dev"][-1]["train_loss"], spec.metric, score, " (best)" if better else "")

    module.load_state_dict(load_file(os.path.join(cell_dir, BEST)))
    phi_test = lang_index[cell.train_lang] if cfg.phi_routing == "source" else None
    tests = {lang: fn(module, device, phi_test) for lang, fn in test_evals.items()}
    result = {"identity": identity, "cell": asdict(cell), "name": cell.name, "dev": state["dev"],
              "best_epoch": state["best_epoch"], "best_dev": state["best_dev"], "test": tests,
              "steps_per_epoch": steps_per_epoch, "train_rows": len(train_rows), "world_size": world,
              "zero_stage": zero_stage(ds), "precision": precision(ds), "wall_seconds": time.time() - t0}

    result = json.loads(json.dumps(result))  # what a finished cell reads back: the same object either way

    def finish():
        atomic_write_json(os.path.join(cell_dir, RESULT), result)  # last: marks the cell finished
        shutil.rmtree(ckpt_root, ignore_errors=True)  # the result holds everything the tables need

    on_rank0(finish, rank, world)
    return result


def make_eval(spec, cfg, examples, rows, labels, rank, world, lang_index, scorer) -> callable:
    """A dev/test evaluation closure: predict ``rows`` and score them against ``examples``."""
    def run(model, device, phi_lang):
        logits = predict(model, rows, lang_index, cfg.eval_batch_size, device, rank, world, phi_lang)
        return scorer(examples, rows, logits, labels)

    return run


__all__ = ["BEST", "Cell", "RESULT", "STATE", "batch_layout", "linear_schedule", "make_eval", "run_cell"]
