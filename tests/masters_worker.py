"""Worker for tests/test_meta_masters.py: a bf16 DeepSpeed engine on CPU; prints whether fp32_theta returns the
fp32 masters (checked against DeepSpeed's own safe_get_full_fp32_param), one JSON file per rank in the
directory given as the second argument. Run under mpiexec or directly."""
import json
import os
import sys

import torch


def main(stage: int) -> dict:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    from negint_ds.config import AdapterConfig, ModelConfig
    from negint_ds.meta import fp32_theta, meta_params
    from negint_ds.model import build_model
    from negint_ds.params import split_parameters

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=True,
                               distributed_port=int(os.environ.get("MASTER_PORT", "29500")))
    torch.manual_seed(0)  # identical initial weights on every rank
    cfg = ModelConfig(layers=1, dim=16, heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.0, max_positions=8,
                      adapters=AdapterConfig(kind="language"))
    model = build_model(cfg, 50, 2)
    split = split_parameters(model, 2)
    for p in (p for phi in split.phi for p in phi.values()):
        p.requires_grad_(False)
    ds = {"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}, "zero_optimization": {"stage": stage},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(split.theta.values()), config=ds)
    g = torch.Generator().manual_seed(1 + torch.distributed.get_rank())
    for _ in range(3):  # masters move in fp32 steps the bf16 copy cannot follow exactly
        ids = torch.randint(5, 50, (2, 8), generator=g)
        loss = engine(ids, torch.zeros(2, dtype=torch.long), torch.tensor([1, 9]), torch.tensor([6, 7]), lang=0)
        engine.backward(loss)
        engine.step()
    values, source = fp32_theta(engine, split)
    refs = [safe_get_full_fp32_param(p) for p in split.theta.values()]
    if refs[0] is None:  # ZeRO-0's optimizer has no per-parameter mapping: read its fp32 groups directly
        index = {id(a): b for lg, hg in zip(engine.optimizer.fp16_groups, engine.optimizer.fp32_groups)
                 for a, b in zip(lg, hg)}
        refs = [index[id(p)] for p in split.theta.values()]
    working = meta_params(engine, split, [[p.detach().float() for p in phi.values()] for phi in split.phi], "working")
    return {"rank": torch.distributed.get_rank(), "source": source,
            "all_fp32": all(v.dtype == torch.float32 for v in values),
            "equal_masters": all(torch.equal(v, r.float()) for v, r in zip(values, refs)),
            "finer_than_bf16": sum(int((v != p.detach().float()).sum()) for v, p in zip(values, split.theta.values())),
            "rounds_to_working": all(torch.equal(v.to(torch.bfloat16), p.detach())
                                     for v, p in zip(values, split.theta.values())),
            "working_dtype": str(working.dtype)}


if __name__ == "__main__":
    out = main(int(sys.argv[1]))
    # one file per rank: mpiexec merges the ranks' stdout, and two lines can interleave there
    with open(os.path.join(sys.argv[2], f"rank{out['rank']}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
