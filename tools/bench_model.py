"""Training-step throughput of our Perceivers against the reference implementations.

Times forward + backward + fused-AdamW steps (tokens/s; medians of interleaved steps after
warm-up, wall clock and process CPU time) of
  * our `PerceiverMLM` vs HF `transformers.PerceiverForMaskedLM` (same hyperparameters, same
    weights, same batch); ours twice: decoding all positions, and decoding only the masked
    positions (its training path: the MLM loss only uses them, so the loss is the same);
  * our `PerceiverAR` vs krasserm's `perceiver-io==0.11.0` `CausalSequenceModel` (same
    hyperparameters, prefix dropout 0.5 and rotary embedding in every layer in both).

    python tools/bench_model.py --threads 2              # all cases in CASES
    python tools/bench_model.py --threads 1 --cases mlm-small,ar-512 --bf16

krasserm's package declares Python < 3.11; install it without its pins:
    pip install --no-deps --ignore-requires-python perceiver-io==0.11.0 einops fairscale
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models.hf_interop import from_hf_state_dict, hf_config  # noqa: E402
from pretrain.models.perceiver_ar import PerceiverAR, PerceiverARConfig  # noqa: E402
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM  # noqa: E402

VOCAB = 262
Row = tuple[str, int, tuple[float, float]]  # name, parameters, (wall, CPU) seconds per step
MASK_ID = 3


@dataclass(frozen=True)
class Case:
    """A benchmark configuration: model hyperparameters and the batch."""

    model: str  # "mlm" or "ar"
    description: str
    fields: dict[str, Any]
    batch_size: int
    seq_len: int | None = None  # None: --seq-len


# Per model the first case is the headline; the second is a shape where our advantages (masked
# decoding, fused attention) matter less: the latent stack dominates and both are matmul-bound.
CASES = {
    "mlm-paper-shape": Case(
        "mlm",
        "MLM shaped like the paper's, 2048 bytes, 256 x 512 latents, 8 layers, 8 heads",
        dict(
            num_input_channels=256,
            num_latents=256,
            num_latent_channels=512,
            cross_attention_qk_channels=256,
            cross_attention_v_channels=512,
            self_attention_qk_channels=256,
            self_attention_v_channels=512,
            num_self_attention_layers_per_block=8,
            num_self_attention_heads=8,
            num_cross_attention_heads=8,
            num_decoder_heads=8,
        ),
        2,
        seq_len=2048,
    ),
    "mlm-small": Case(
        "mlm",
        "MLM, 256 x 256 latents, 4 layers, d_model 256",
        dict(
            num_input_channels=256,
            num_latents=256,
            num_latent_channels=256,
            cross_attention_qk_channels=128,
            cross_attention_v_channels=256,
            self_attention_qk_channels=128,
            self_attention_v_channels=256,
            num_self_attention_layers_per_block=4,
        ),
        8,
    ),
    "mlm-wide": Case(
        "mlm",
        "MLM, 256 x 512 latents, 6 layers, d_model 256",
        dict(
            num_input_channels=256,
            num_latents=256,
            num_latent_channels=512,
            cross_attention_qk_channels=256,
            cross_attention_v_channels=512,
            self_attention_qk_channels=256,
            self_attention_v_channels=512,
            num_self_attention_layers_per_block=6,
        ),
        8,
    ),
    "ar-512": Case(
        "ar",
        "AR, 512 latents, 256 channels, 6 layers",
        dict(num_latents=512, num_channels=256, num_heads=8, num_self_attention_layers=6),
        4,
    ),
    "ar-256": Case(
        "ar",
        "AR, 256 latents, 256 channels, 6 layers",
        dict(num_latents=256, num_channels=256, num_heads=8, num_self_attention_layers=6),
        8,
    ),
}


def time_round_robin(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) median seconds per call of each step function, timed in interleaved rounds.

    Interleaving spreads load from other processes on a shared machine evenly over the
    implementations. The CPU time of this process (all its threads) does not count time spent
    waiting for a core, so it is the steadier measure on a busy machine; with one thread it is
    the step's compute time.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in steps}


def train_step_fn(
    model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], bf16: bool
) -> Callable[[], None]:
    """One AdamW training step of `model` on the loss computed by `loss_fn`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_mlm(case: Case, args: argparse.Namespace) -> list[Row]:
    """Rows of HF and our MLM (decoding all positions / masked positions only)."""
    from transformers import PerceiverForMaskedLM

    seq_len = case.seq_len or args.seq_len
    cfg = PerceiverIOConfig(vocab_size=VOCAB, max_seq_len=seq_len, dropout=0.0, **case.fields)
    torch.manual_seed(0)
    hf = PerceiverForMaskedLM(hf_config(cfg))
    ours = PerceiverMLM(cfg)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    b, s = case.batch_size, seq_len
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(6, VOCAB, (b, s), generator=gen)
    k = int(0.15 * s)  # masked positions per row
    positions = torch.rand(b, s, generator=gen).topk(k, dim=1).indices.sort(dim=1).values
    input_ids = tokens.scatter(1, positions, MASK_ID)
    labels = torch.full_like(tokens, -100).scatter(1, positions, tokens.gather(1, positions))
    attention_mask = torch.ones(b, s, dtype=torch.bool)
    masked_labels = tokens.gather(1, positions)

    with torch.no_grad():  # same function: the comparison is apples to apples
        ours.eval()
        hf.eval()
        diff = (ours(input_ids) - hf(input_ids=input_ids).logits).abs().max().item()
        assert diff < 1e-3, f"HF and our logits differ by {diff}"

    def hf_loss() -> torch.Tensor:
        return hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def ours_masked() -> torch.Tensor:
        logits = ours(input_ids, attention_mask, output_positions=positions)
        return F.cross_entropy(logits.flatten(0, 1).float(), masked_labels.flatten())

    def ours_full() -> torch.Tensor:
        logits = ours(input_ids, attention_mask)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    runs = {
        "HF PerceiverForMaskedLM": train_step_fn(hf, hf_loss, args.bf16),
        "ours, decode all positions": train_step_fn(ours, ours_full, args.bf16),
        "ours, decode masked only": train_step_fn(ours, ours_masked, args.bf16),
    }
    if args.compile:
        compiled = torch.compile(ours)

        def compiled_masked() -> torch.Tensor:
            logits = compiled(input_ids, attention_mask, output_positions=positions)
            return F.cross_entropy(logits.flatten(0, 1).float(), masked_labels.flatten())

        runs["ours, decode masked only, compiled"] = train_step_fn(ours, compiled_masked, args.bf16)
    seconds = time_round_robin(runs, args.warmup, args.steps)
    return [(name, cfg.num_params(), seconds[name]) for name in runs]


def bench_ar(case: Case, args: argparse.Namespace) -> list[Row]:
    """Rows of krasserm's and our Perceiver AR (rotary on half the channels of every head)."""
    from perceiver.model.core import CausalSequenceModel, CausalSequenceModelConfig

    cfg = PerceiverARConfig(vocab_size=VOCAB, max_seq_len=args.seq_len, **case.fields)
    torch.manual_seed(0)
    ours = PerceiverAR(cfg)
    ours.init_weights()
    theirs = CausalSequenceModel(
        CausalSequenceModelConfig(
            vocab_size=VOCAB,
            max_seq_len=cfg.max_seq_len,
            max_latents=cfg.num_latents,
            num_channels=cfg.num_channels,
            num_heads=cfg.num_heads,
            num_self_attention_layers=cfg.num_self_attention_layers,
            num_self_attention_rotary_layers=-1,
            self_attention_widening_factor=cfg.self_attention_widening_factor,
            cross_attention_widening_factor=cfg.cross_attention_widening_factor,
            cross_attention_dropout=cfg.cross_attention_dropout,
            output_norm=True,
            abs_pos_emb=cfg.abs_pos_emb,
        )
    )
    b, s, n = case.batch_size, args.seq_len, cfg.num_latents
    tokens = torch.randint(6, VOCAB, (b, s + 1), generator=torch.Generator().manual_seed(0))
    input_ids, labels = tokens[:, :-1], tokens[:, -n:]

    def theirs_loss() -> torch.Tensor:
        logits = theirs(input_ids, prefix_len=s - n).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    def ours_loss() -> torch.Tensor:
        return F.cross_entropy(ours(input_ids).flatten(0, 1).float(), labels.flatten())

    models = {"krasserm perceiver-io 0.11.0": (theirs, theirs_loss), "ours": (ours, ours_loss)}
    runs = {name: train_step_fn(model, loss, args.bf16) for name, (model, loss) in models.items()}
    seconds = time_round_robin(runs, args.warmup, args.steps)
    return [
        (name, sum(p.numel() for p in model.parameters()), seconds[name])
        for name, (model, _) in models.items()
    ]


def format_table(title: str, rows: list[Row], tokens: int) -> str:
    """Markdown table; ratios are relative to the first (reference) row."""
    lines = [
        f"**{title}**",
        "",
        "| implementation | params | step wall (s) | tokens/s | speed-up (wall) "
        "| step CPU (s) | speed-up (CPU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ref_wall, ref_cpu = rows[0][2]
    for name, params, (wall, cpu) in rows:
        lines.append(
            f"| {name} | {params / 1e6:.2f}M | {wall:.3f} | {tokens / wall:,.0f} "
            f"| {ref_wall / wall:.2f}x | {cpu:.3f} | {ref_cpu / cpu:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for all models")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd MLM")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {list(CASES)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"$ python tools/bench_model.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"torch {torch.__version__}, {platform.machine()}, torch threads: {args.threads}, "
        f"sequence length {args.seq_len}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
        f"forward + backward + fused AdamW step, medians of {args.steps} interleaved steps "
        f"after {args.warmup} warm-up steps\n"
    )
    for name in args.cases.split(","):
        case = CASES[name]
        rows = (bench_mlm if case.model == "mlm" else bench_ar)(case, args)
        seq_len = case.seq_len or args.seq_len
        title = f"{name}: {case.description}, batch {case.batch_size} x {seq_len}"
        print(format_table(title, rows, case.batch_size * seq_len) + "\n")
    print(
        "MLM: 15% of positions masked; 'decode masked only' passes output_positions so the\n"
        "decoder computes only the logits the MLM loss uses (same loss, less work).\n"
        "AR: prefix dropout 0.5 in both; loss over the latent positions."
    )


if __name__ == "__main__":
    main()
