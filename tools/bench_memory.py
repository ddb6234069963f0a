"""Memory per rank under DeepSpeed ZeRO 0/1/2/3, with 1 and 2 ranks, same model, same run.

Each case starts its ranks (gloo, CPU), builds the model the way the trainer does
(`pretrain.train.parallelize.build_for_training`: partitioned while it is built under ZeRO-3), wraps
it in the trainer's DeepSpeed engine (`pretrain.train.engine.build_engine`), runs two AdamW steps
and reports, per rank (the largest over the ranks):

* model-state memory: the bytes of every tensor alive in the process (parameters, gradients,
  optimizer states, fp32 masters, DeepSpeed's buffers; each storage once), the larger of the
  two moments of a step when it peaks: after the backward pass and after the optimizer step;
* the process's peak resident memory, and that peak less the resident memory before the model
  was built (libraries and the interpreter).

    python tools/bench_memory.py                          # 67.5M MLM, fp32 AdamW
    python tools/bench_memory.py --stages 0,3 --worlds 2 --set num_latent_channels=256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

# The tiny MLM preset widened (issue #14's measurement): 67.5M parameters.
WIDE = {
    "num_latent_channels": 1024,
    "num_self_attention_layers_per_block": 6,
    "self_attention_widening_factor": 4,
    "cross_attention_widening_factor": 4,
    "cross_attention_v_channels": 1024,
    "self_attention_v_channels": 1024,
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_tensor_bytes() -> int:
    """Bytes of the storages of every tensor the garbage collector can see (each once)."""
    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
            continue
        try:
            storage = obj.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


def model_config(args) -> dict:
    fields = dict(WIDE) if args.wide else {}
    for item in args.set:
        key, value = item.split("=", 1)
        fields[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return {"preset": args.preset, "dropout": 0.0, **fields}


def measure_rank(rank: int, world: int, stage: int, model: dict, batch: int, out: str) -> None:
    import deepspeed
    import torch.nn.functional as F

    from pretrain.config import config_from_dict
    from pretrain.train.ds_config import build_ds_config
    from pretrain.train.engine import build_engine
    from pretrain.train.parallelize import build_for_training, num_parameters

    deepspeed.init_distributed("gloo")
    cfg = config_from_dict(
        {
            "model": model,
            "data": {"dir": "/unused"},
            "optimizer": {"name": "adamw", "lr": 1e-4, "warmup_steps": 0},
            "trainer": {"zero_stage": stage, "precision": "fp32", "micro_batch_size": batch},
        }
    )
    before = rss_bytes()
    ds_config = build_ds_config(cfg, world, False)
    net = build_for_training(cfg.model_type, cfg.model, 0, ds_config)
    params = num_parameters(net)
    engine = build_engine(cfg, net, torch.device("cpu"), world, False)
    seq, vocab = cfg.model.max_seq_len, cfg.model.vocab_size
    gen = torch.Generator().manual_seed(rank)
    state = 0
    for _ in range(2):
        ids = torch.randint(6, vocab, (batch, seq), generator=gen)
        positions = torch.rand(batch, seq, generator=gen).topk(seq // 7, dim=1).indices
        logits = engine(ids, output_positions=positions)
        loss = F.cross_entropy(logits.flatten(0, 1), ids.gather(1, positions).flatten())
        engine.backward(loss)
        del logits, loss
        state = max(state, live_tensor_bytes())  # gradients alive (before the step)
        engine.step()
        state = max(state, live_tensor_bytes())  # optimizer states alive
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"rank": rank, "params": params, "state": state, "peak": peak, "before": before}
    Path(out, f"rank{rank}.json").write_text(json.dumps(row))


def _worker(rank, world, port, stage, model, batch, out):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    measure_rank(rank, world, stage, model, batch, out)


def run_case(stage: int, world: int, model: dict, batch: int) -> dict:
    import torch.multiprocessing as mp

    from pretrain.train.distributed import free_port

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _worker, args=(world, free_port(), stage, model, batch, out), nprocs=world,
            start_method="spawn", join=True,
        )  # fmt: skip
        rows = [json.loads(p.read_text()) for p in Path(out).glob("rank*.json")]
    return {
        "stage": stage,
        "world": world,
        "params": rows[0]["params"],
        "state_gib": max(r["state"] for r in rows) / 2**30,
        "peak_gib": max(r["peak"] for r in rows) / 2**30,
        "peak_less_start_gib": max(r["peak"] - r["before"] for r in rows) / 2**30,
    }


def table(results: list[dict]) -> str:
    base = {r["world"]: r for r in results if r["stage"] == 0}
    lines = [
        "| ZeRO | ranks | model-state GiB / rank | vs ZeRO-0 | peak RSS GiB / rank "
        "| peak less start GiB | vs ZeRO-0 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ref = base.get(r["world"])
        ratio = f"{r['state_gib'] / ref['state_gib']:.2f}x" if ref else "-"
        peak_ratio = f"{r['peak_less_start_gib'] / ref['peak_less_start_gib']:.2f}x" if ref else "-"
        lines.append(
            f"| {r['stage']} | {r['world']} | {r['state_gib']:.3f} | {ratio} | {r['peak_gib']:.3f} "
            f"| {r['peak_less_start_gib']:.3f} | {peak_ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--preset", default="perceiver_io_mlm_tiny")
    parser.add_argument("--no-wide", dest="wide", action="store_false", help="the preset as is")
    parser.add_argument("--set", action="append", default=[], help="model field=value")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="run the ranks with glibc's MALLOC_MMAP_THRESHOLD_ fixed at this many bytes: freed "
        "large buffers go back to the OS at once instead of staying resident (see "
        "docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    model = model_config(args)
    if args.mmap_threshold is not None:  # read by glibc when each spawned rank starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    results = []
    for world in (int(w) for w in args.worlds.split(",")):
        for stage in (int(s) for s in args.stages.split(",")):
            results.append(run_case(stage, world, model, args.batch))
            print(results[-1], flush=True)
    print(f"\n$ python tools/bench_memory.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    allocator = os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")
    print(f"model {model}, {results[0]['params']:,} parameters, fp32 AdamW, CPU, gloo")
    print(f"MALLOC_MMAP_THRESHOLD_: {allocator}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
