"""Training throughput of one MLM step at the paper's size, outside DeepSpeed, for same-run baselines.

    python benchmarks/pretrain_throughput.py --impl hf    # HF XLMRobertaForMaskedLM, bf16 autocast
    python benchmarks/pretrain_throughput.py --impl ours  # negint_ds MaskedLM in plain PyTorch, bf16 autocast

Both are fed the same masked batches from the prepared built-in corpus (``jointpair_en_sw`` recipe,
so run ``python -m negint_ds.prepare --config jointpair_en_sw`` first), use fused AdamW and gradient
clipping, and are timed over 3 repetitions of ``--steps`` steps after warm-up (synchronised wall clock). The DeepSpeed launcher's own throughput comes
from its ``metrics.jsonl`` (see ``summarize.py``). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from negint_ds.config import load_experiment  # noqa: E402
from negint_ds.data.batches import TrainBatches  # noqa: E402
from negint_ds.data.binarized import open_binarized  # noqa: E402
from negint_ds.data.prepare import check_prepared  # noqa: E402
from negint_ds.data.sampling import LanguageSchedule, language_probs  # noqa: E402
from negint_ds.data.vocab import N_SPECIAL, PAD_ID  # noqa: E402
from negint_ds.model import build_model, count_parameters, flops_per_token  # noqa: E402


def batches(cfg, batch: int, n: int):
    man = check_prepared(cfg.data)
    streams = [open_binarized(os.path.join(cfg.data.dir, man["languages"][l]["splits"]["train"]["file"]))
               for l in cfg.lang_ids]
    counts = [man["languages"][l]["splits"]["train"]["sentences"] for l in cfg.lang_ids]
    tb = TrainBatches(streams, LanguageSchedule(language_probs(counts, cfg.train.lang_temperature), 0),
                      cfg.train.seq_len, batch, 1, 1, 0, cfg.mlm, man["vocab"]["size"], man["vocab"]["mask_id"],
                      N_SPECIAL, 0)
    return [tb.step(i)[1][0] for i in range(n)], man["vocab"]["size"]


def hf_model(cfg, vocab):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    m = cfg.model
    hc = XLMRobertaConfig(vocab_size=vocab, hidden_size=m.dim, num_hidden_layers=m.layers, num_attention_heads=m.heads,
                          intermediate_size=m.ffn_dim, max_position_embeddings=cfg.train.seq_len + 2,
                          pad_token_id=PAD_ID, hidden_dropout_prob=m.dropout,
                          attention_probs_dropout_prob=m.attention_dropout, type_vocab_size=1)
    return XLMRobertaForMaskedLM(hc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--impl", choices=["hf", "ours"], required=True)
    p.add_argument("--recipe", default="jointpair_en_sw")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="cuda", help="cuda (bf16 autocast, timed) or cpu (fp32 smoke test)")
    a = p.parse_args()
    cfg = load_experiment(a.recipe)
    data, vocab = batches(cfg, a.batch, 16)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = (hf_model(cfg, vocab) if a.impl == "hf" else build_model(cfg.model, vocab, len(cfg.lang_ids))).to(dev)
    fwd = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01, fused=cuda)
    L = cfg.train.seq_len
    prepared = []
    for b in data:
        if a.impl == "hf":
            labels = torch.full((b.input_ids.numel(),), -100, dtype=torch.long)
            labels[b.pred_positions] = b.targets
            prepared.append({"input_ids": b.input_ids.to(dev), "labels": labels.view(-1, L).to(dev)})
        else:
            prepared.append({k: getattr(b, k).to(dev) for k in ("input_ids", "lang_ids", "pred_positions", "targets")})

    def step(i):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = fwd(**prepared[i % len(prepared)]).loss if a.impl == "hf" else fwd(**prepared[i % len(prepared)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(a.warmup):
        step(i)
    times = []
    for rep in range(3):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(a.steps):
            loss = step(i)
        float(loss)  # synchronises the device
        times.append((time.perf_counter() - t0) / a.steps)
    s = statistics.median(times)
    tokens = a.batch * L
    print(json.dumps({
        "impl": a.impl, "compile": a.compile, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "batch": a.batch, "seq_len": L, "params": count_parameters(model), "step_s": s, "tokens_per_s": tokens / s,
        "tflops_model": flops_per_token(cfg.model, L, vocab, cfg.mlm.mask_prob) * tokens / s / 1e12,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "final_loss": float(loss), "reps_s": times}))


if __name__ == "__main__":
    main()
