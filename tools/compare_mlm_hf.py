"""Our `PerceiverMLM` and HF `transformers.PerceiverForMaskedLM` trained side by side.

Both models start from the same weights (ours built and `init_weights()`-ed, copied into HF with
`pretrain.models.hf_interop`), see the same batches with the same whole-word MLM masks
(`data_pipeline.loading.collators.MLMMasker`, keyed by the step as in the trainer), and train with
the trainer's optimizer: AdamW over
`pretrain.train.optim.param_groups` (AdamW is elementwise, so our fused
q/k/v projections and HF's separate ones get identical updates), the demo's warmup + cosine
schedule, gradient clipping at 1.0, fp32. Both losses go through the MLM objective's path
(`gather_label_positions` + `_sum_ce`): ours decodes only the masked positions, HF decodes all
of them and its logits are gathered at the same positions.

Every `--log-every` steps it prints both models' train loss and masked-byte accuracy over the
window, the largest per-step |loss difference| in it and the relative distance between the two
parameter sets; at the end the validation loss and accuracy of both, next to the byte-unigram
baseline (the loss and accuracy of predicting the masked bytes from their frequencies alone), and
a verdict computed from those numbers. This is the check that a plateau of the demo MLM is the
optimisation problem and not a bug of ours: the reference implementation must plateau alike.
(The trajectories match to ~1e-5 in the loss until the loss drops fast or leaves a plateau;
there float32 rounding differences are amplified and the parameters separate by 10-30%, as two
runs of our model from weights 1e-7 apart do, while the losses stay within a few 0.01 nats.)
The demo itself trains its own preset (perceiver_io_mlm_demo, 32 bytes) on 2 ranks; this runs
fp32 in one process, with `--preset` (default perceiver_io_mlm_tiny, 256 bytes).
`--overfit` trains on one fixed batch with fixed masks instead: both models must memorise it,
which shows the loss path (masking, gathering, decoding, cross-entropy) can be driven to zero
(at lr 1e-3 the tiny model needs ~200 steps to leave the unigram plateau and ~600 to fit).

    python tools/compare_mlm_hf.py                       # demo corpus, 600 steps, batch 32
    python tools/compare_mlm_hf.py --overfit --steps 1000 --batch-size 16 --lr 1e-3
    python tools/compare_mlm_hf.py --data DIR --steps 2000     # MLM shards of the preset's length

Without `--data` the demo corpus (the stdlib docstrings) is written to a temporary directory the
way `perceiver demo` does it (~5 s).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.loading.collators import MLMMasker  # noqa: E402
from data_pipeline.shards.manifest import check_shards, iter_samples  # noqa: E402
from data_pipeline.shards.prepare import prepare_demo_corpus  # noqa: E402
from data_pipeline.tokenization.tokenizer import tokenizer_from_manifest  # noqa: E402
from pretrain.config import CONFIG_ROOT, Config, load_config  # noqa: E402
from pretrain.models.hf_interop import hf_config, to_hf_state_dict  # noqa: E402
from pretrain.models.perceiver_io import PerceiverMLM  # noqa: E402
from pretrain.objectives.text import IGNORE, _sum_ce, gather_label_positions  # noqa: E402
from pretrain.train.evaluate import VAL_KEY_OFFSET  # noqa: E402
from pretrain.train.optim import build_optimizer, build_scheduler  # noqa: E402

Batch = dict[str, torch.Tensor]
LogitsFn = Callable[[nn.Module, Batch, torch.Tensor], torch.Tensor]
STAT_KEYS = ("loss_sum", "correct", "count")  # what `_sum_ce` returns
EVAL_BATCH = 64
FIT_ACCURACY = 0.95  # --overfit: a model that only knows byte frequencies scores ~0.1


def ours_logits(model: nn.Module, batch: Batch, positions_bk: torch.Tensor) -> torch.Tensor:
    """Our model's logits [B, K, V], decoding only `positions_bk` (the trainer's MLM path)."""
    return model(batch["input_ids"], batch["attention_mask"], output_positions=positions_bk)


def hf_logits(model: nn.Module, batch: Batch, positions_bk: torch.Tensor) -> torch.Tensor:
    """HF's logits, decoded at every position and gathered at `positions_bk` ([B, K, V])."""
    mask = batch["attention_mask"].long()  # HF computes (1 - mask) * min_float
    logits_bnv = model(inputs=batch["input_ids"], attention_mask=mask).logits
    index = positions_bk[..., None].expand(-1, -1, logits_bnv.shape[-1])
    return logits_bnv.gather(1, index)


LOGITS: dict[str, LogitsFn] = {"ours": ours_logits, "HF": hf_logits}


def mlm_step(
    name: str, model: nn.Module, batch: Batch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss and summed statistics on the masked positions, as the MLM objective computes
    them (`_sum_ce` over the positions `gather_label_positions` picks)."""
    positions_bk, labels_bk = gather_label_positions(batch["labels"])
    sums = _sum_ce(LOGITS[name](model, batch, positions_bk), labels_bk)
    loss = sums["loss_sum"] / sums["count"].clamp(min=1)
    sums["loss_sum"] = sums["loss_sum"].detach()
    return loss, sums


@dataclass
class EvalResult:
    """Loss and masked-byte accuracy of one model on a fixed set of masked bytes."""

    loss: float
    accuracy: float
    loss_se: float  # standard error of `loss` (std of the per-byte losses / sqrt(count))


def load_split(data_dir: Path, split: str) -> torch.Tensor:
    """All samples of one split in storage order, as long [N, L]."""
    return torch.from_numpy(np.stack(list(iter_samples(data_dir, split))).astype(np.int64))


def batches(
    train: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Endless batches of `train` rows, reshuffled every epoch (a partial last batch dropped)."""
    while True:
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield train[order[start : start + batch_size]]


def build_models(cfg: Config, seed: int) -> dict[str, nn.Module]:
    """Our model with HF's initialisation and the HF model holding the same weights."""
    from transformers import PerceiverForMaskedLM

    model_cfg = cfg.model
    torch.manual_seed(seed)
    ours = PerceiverMLM(model_cfg)
    ours.init_weights()
    hf = PerceiverForMaskedLM(hf_config(model_cfg))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), model_cfg))
    return {"ours": ours, "HF": hf}


def parameter_distance(models: dict[str, nn.Module], cfg: Config) -> float:
    """||theta_ours - theta_HF|| / ||theta_ours|| over all parameters (in HF's layout)."""
    ours = to_hf_state_dict(models["ours"].state_dict(), cfg.model)
    hf = models["HF"].state_dict()
    diff = sum(float((ours[k] - hf[k]).pow(2).sum()) for k in ours)
    norm = sum(float(v.pow(2).sum()) for v in ours.values())
    return math.sqrt(diff / norm)


@torch.no_grad()
def evaluate(
    models: dict[str, nn.Module], masked: list[Batch]
) -> tuple[dict[str, EvalResult], EvalResult]:
    """Each model's loss/accuracy on the masked bytes of `masked`, and the byte-unigram baseline.

    The baseline predicts every masked byte from the frequencies of the masked bytes themselves
    (their entropy and the share of the most frequent one): the best any context-free model can
    do on these bytes, i.e. the plateau a model sits on when it has learned nothing but that.
    """
    results = {}
    for name, model in models.items():
        model.eval()
        losses, correct = [], []
        for batch in masked:
            positions_bk, labels_bk = gather_label_positions(batch["labels"])
            logits_bkv = LOGITS[name](model, batch, positions_bk)
            valid = labels_bk != IGNORE
            logits_kv, labels_k = logits_bkv[valid], labels_bk[valid]
            losses.append(nn.functional.cross_entropy(logits_kv, labels_k, reduction="none"))
            correct.append(logits_kv.argmax(-1) == labels_k)
        model.train()
        per_byte = torch.cat(losses)
        results[name] = EvalResult(
            float(per_byte.mean()),
            float(torch.cat(correct).float().mean()),
            float(per_byte.std() / math.sqrt(len(per_byte))),
        )
    labels = torch.cat([b["labels"][b["labels"] != IGNORE] for b in masked])
    freq = torch.bincount(labels).double() / len(labels)
    logp = torch.log(freq[labels])
    unigram = EvalResult(
        float(-logp.mean()), float(freq.max()), float(logp.std() / math.sqrt(len(labels)))
    )
    return results, unigram


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="perceiver_io_mlm_tiny", help="model preset")
    parser.add_argument("--data", type=Path, help="MLM shard dir (default: build the demo's)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=20, help="linear warmup steps")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="weights, batch order and masks")
    parser.add_argument(
        "--overfit", action="store_true", help="train on one fixed batch with fixed masks"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, data_dir: Path) -> None:
    """Trains both models and prints the side-by-side table, evaluation and verdict."""
    # The demo's optimizer and MLM settings, with this run's preset, steps, lr and seed.
    cfg = load_config(
        CONFIG_ROOT / "demo_mlm.yaml",
        [
            f"model.preset={args.preset}",
            f"data.dir={data_dir}",
            f"trainer.max_steps={args.steps}",
            f"trainer.seed={args.seed}",
            f"optimizer.lr={args.lr}",
            f"optimizer.warmup_steps={args.warmup}",
        ],
    )
    model_cfg = cfg.model
    manifest = check_shards(
        data_dir, seq_len=model_cfg.max_seq_len, objective="mlm", vocab_size=model_cfg.vocab_size
    )
    masker = MLMMasker(
        tokenizer_from_manifest(data_dir, manifest),
        mask_prob=cfg.objective.mask_prob,
        seed=cfg.trainer.seed,
    )
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    models = build_models(cfg, args.seed)
    optimizers = {
        n: build_optimizer(m, cfg.optimizer, torch.device("cpu")) for n, m in models.items()
    }
    schedulers = {n: build_scheduler(o, cfg.optimizer, args.steps) for n, o in optimizers.items()}
    group_sizes = {
        n: [sum(p.numel() for p in g["params"]) for g in o.param_groups]
        for n, o in optimizers.items()
    }
    assert group_sizes["ours"] == group_sizes["HF"], group_sizes

    loader = batches(train, args.batch_size, torch.Generator().manual_seed(args.seed))
    fixed = masker(next(loader), 0) if args.overfit else None
    with torch.no_grad():  # the models are in training mode, as in the loop (dropout is 0)
        probe = masker(val[: args.batch_size], VAL_KEY_OFFSET)
        positions_bk, _ = gather_label_positions(probe["labels"])
        ours_init, hf_init = (LOGITS[n](m, probe, positions_bk) for n, m in models.items())
        init_diff = float((ours_init - hf_init).abs().max())

    opt = cfg.optimizer
    print(f"$ python tools/compare_mlm_hf.py {' '.join(sys.argv[1:])}")
    print(
        f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads, fp32; "
        f"{args.preset} ({model_cfg.num_params():,} parameters), data {data_dir} "
        f"({len(train):,} train / {len(val):,} val samples of {model_cfg.max_seq_len} bytes)"
    )
    print(
        f"AdamW lr {opt.lr:g} betas {tuple(opt.betas)} eps {opt.eps:g} weight decay "
        f"{opt.weight_decay:g} on {group_sizes['ours'][0]:,} matrix entries (not on "
        f"{group_sizes['ours'][1]:,} bias/norm entries), warmup {opt.warmup_steps} + cosine "
        f"to {opt.min_lr_ratio:g} x lr, clip {opt.grad_clip:g}; batch {args.batch_size}, "
        f"{args.steps} steps, {masker}"
        + ("; OVERFIT: one fixed batch, fixed masks" if args.overfit else "")
    )
    print(f"initial weights identical; max |logit difference| at init: {init_diff:.2e}\n")
    print(
        "| step | lr | loss ours | loss HF | max abs dloss | acc ours | acc HF "
        "| param rel. diff | elapsed |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    window = {n: dict.fromkeys(STAT_KEYS, 0.0) for n in models}
    max_dloss = 0.0
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        # keys as the trainer's (micro_step * world_size + rank) with one rank, from 0
        batch = fixed if fixed is not None else masker(next(loader), step - 1)
        lr = schedulers["ours"].get_last_lr()[0]
        losses = {}
        for name, model in models.items():
            loss, sums = mlm_step(name, model, batch)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            optimizers[name].step()
            schedulers[name].step()
            losses[name] = loss.item()
            for key in window[name]:
                window[name][key] += float(sums[key])
        max_dloss = max(max_dloss, abs(losses["ours"] - losses["HF"]))
        if step == 1 or step % args.log_every == 0 or step == args.steps:
            loss_o, loss_h = (window[n]["loss_sum"] / window[n]["count"] for n in models)
            acc_o, acc_h = (window[n]["correct"] / window[n]["count"] for n in models)
            print(
                f"| {step} | {lr:.2e} | {loss_o:.4f} | {loss_h:.4f} | {max_dloss:.1e} "
                f"| {acc_o:.4f} | {acc_h:.4f} | {parameter_distance(models, cfg):.1e} "
                f"| {time.perf_counter() - start:.0f} s |",
                flush=True,
            )
            window = {n: dict.fromkeys(STAT_KEYS, 0.0) for n in models}
            max_dloss = 0.0

    if fixed is not None:
        title, masked = "the fixed training batch (its training masks)", [fixed]
    else:
        title = f"validation ({len(val):,} samples, masks keyed as the trainer's)"
        masked = [
            masker(val[i : i + EVAL_BATCH], VAL_KEY_OFFSET + i // EVAL_BATCH)
            for i in range(0, len(val), EVAL_BATCH)
        ]
    results, unigram = evaluate(models, masked)
    print(f"\nEvaluation on {title}:\n")
    print("| model | masked-byte loss (nats) | +- s.e. | masked-byte accuracy |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in [*results.items(), ("byte-unigram baseline", unigram)]:
        print(f"| {name} | {r.loss:.4f} | {r.loss_se:.4f} | {r.accuracy:.4f} |")
    print("\n" + verdict(results, unigram, args.overfit))


def verdict(results: dict[str, EvalResult], unigram: EvalResult, overfit: bool) -> str:
    """One line computed from the final evaluation.

    Default: the two models agree if their losses differ by at most twice the standard error of
    the loss estimate (a smaller difference cannot be resolved by the evaluated bytes), and a
    model "learned beyond byte frequencies" if its loss is more than two standard errors below
    the unigram baseline. `--overfit`: both must reach `FIT_ACCURACY` on the batch they trained
    on. No agreement test there: once the plateau breaks, rounding differences are amplified
    and the two runs separate (as two runs of one implementation from weights 1e-7 apart do),
    so how close two near-zero losses end up measures memorisation speed, not the models.
    """
    ours, hf = results["ours"], results["HF"]
    if overfit:
        fitted = [n for n, r in results.items() if r.accuracy >= FIT_ACCURACY]
        return (
            f"verdict: memorised the batch (accuracy >= {FIT_ACCURACY}, vs "
            f"{unigram.accuracy:.3f} from byte frequencies): {', '.join(fitted) or 'neither'}"
            f" -> the loss path {'works' if len(fitted) == len(results) else 'does NOT work'}"
            f" (final losses: ours {ours.loss:.4f}, HF {hf.loss:.4f} nats)"
        )
    tol = 2 * max(ours.loss_se, hf.loss_se)
    diff = abs(ours.loss - hf.loss)
    agree = (
        f"losses agree (|diff| {diff:.4f} <= 2 s.e. = {tol:.4f} nats)"
        if diff <= tol
        else f"losses DIFFER (|diff| {diff:.4f} > 2 s.e. = {tol:.4f} nats)"
    )
    beyond = {n: r.loss < unigram.loss - 2 * unigram.loss_se for n, r in results.items()}
    level = (
        "both learned beyond byte frequencies"
        if all(beyond.values())
        else "neither beats the byte-unigram baseline: the same plateau"
        if not any(beyond.values())
        else f"only {[n for n, b in beyond.items() if b][0]} beats the byte-unigram baseline"
    )
    return (
        f"verdict: {agree}; {level} (ours {ours.loss - unigram.loss:+.3f}, HF "
        f"{hf.loss - unigram.loss:+.3f} nats vs unigram {unigram.loss:.3f})"
    )


def main(argv: list[str] | None = None) -> None:
    """Runs the comparison on `--data`, or on demo shards written to a temporary directory."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data is not None:
        run(args, args.data)
        return
    demo_cfg = load_config(CONFIG_ROOT / "demo_mlm.yaml", [f"model.preset={args.preset}"])
    seq_len = demo_cfg.model.max_seq_len
    with tempfile.TemporaryDirectory(prefix="compare_mlm_hf_") as tmp:
        data_dir = Path(tmp) / f"stdlib_mlm_{seq_len}"
        print(f"writing the demo corpus as MLM shards of {seq_len} bytes to {data_dir}")
        prepare_demo_corpus(data_dir, seq_len=seq_len, objective="mlm")
        run(args, data_dir)


if __name__ == "__main__":
    main()
