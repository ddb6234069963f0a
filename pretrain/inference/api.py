"""Looking at what a checkpoint learned: text generation (Perceiver AR) and mask filling (MLM).

    from pretrain.inference.api import load_for_inference, generate_text, fill_mask
    loaded = load_for_inference("runs/ar")                       # newest complete checkpoint
    for piece in generate_text(loaded, "The history of", 200, temperature=0.8, top_p=0.9):
        print(piece, end="", flush=True)
    fill_mask(load_for_inference("imported/"), "some words are [MASK].").text

`perceiver generate` and `perceiver fill-mask` are thin wrappers around these functions. Any source
`pretrain.export.load_pretrained` reads works: a run directory (optionally one of its steps), a
checkpoint, a native export or an HF Perceiver directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrain.export import Pretrained, checkpoint_dir_of, load_pretrained
from pretrain.train import checkpoint as ckpt

MASK_MARKER = re.compile(r"\[MASK(?::(\d+))?\]")
REPLACEMENT = "\ufffd"


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and where its weights came from."""

    model: nn.Module
    tokenizer: object
    pretrained: Pretrained

    @property
    def model_type(self) -> str:
        return self.pretrained.model_type


def resolve_step(path: str | Path, step: int) -> Path:
    """The complete checkpoint of ``step`` in a run directory.

    Raises:
        FileNotFoundError: naming the steps that do have a complete checkpoint.
    """
    directory = checkpoint_dir_of(Path(path))
    candidate = directory / ckpt.tag_for_step(step)
    if ckpt.is_complete(candidate):
        return candidate
    steps = [s for s, _ in ckpt.list_complete(directory)]
    raise FileNotFoundError(
        f"{candidate}: no complete checkpoint of step {step}; complete steps: {steps or 'none'}"
    )


def load_for_inference(
    path: str | Path,
    step: int | None = None,
    tokenizer: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Builds the model of ``path`` (run, checkpoint, export or HF directory) in eval mode."""
    from data_pipeline.tokenization.tokenizer import get_tokenizer
    from pretrain.models import build_model

    source = resolve_step(path, step) if step is not None else path
    pretrained = load_pretrained(source, tokenizer)
    model = build_model(pretrained.model_type, pretrained.model)
    model.load_state_dict(pretrained.state_dict)
    model.to(device).eval()
    return LoadedModel(model, get_tokenizer(pretrained.tokenizer_name()), pretrained)


def _require(loaded: LoadedModel, model_type: str, what: str) -> None:
    if loaded.model_type != model_type:
        raise ValueError(
            f"{what} needs a {model_type} model; {loaded.pretrained.source.get('path', 'this')} "
            f"holds a {loaded.model_type}"
        )


def generate_text(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
) -> Iterator[str]:
    """Yields the continuation of ``prompt`` as text, piece by piece, as it is sampled.

    The prompt follows an end-of-document token, as every document does in the packed shards.
    Ids that do not decode to valid UTF-8 appear as U+FFFD; an incomplete character at the end is
    held back until the next token completes it (or until the end).
    """
    _require(loaded, "perceiver_ar", "generate")
    model, tok = loaded.model, loaded.tokenizer
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    device = next(model.parameters()).device
    ids = np.concatenate([[tok.eos_id], np.asarray(tok.encode(prompt), dtype=np.int64)])
    ids = ids[-model.cfg.max_seq_len :]
    input_ids = torch.as_tensor(ids, dtype=torch.long, device=device)[None]
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new: list[int] = []
    emitted = ""
    stream = model.stream(input_ids, max_new_tokens, temperature, top_k, None, generator, top_p)
    for next_b in stream:
        token = int(next_b[0])
        if stop_at_eos and token == tok.eos_id:
            break
        new.append(token)
        text = tok.decode(new)
        stable = text.rstrip(REPLACEMENT)  # perhaps the first bytes of a multi-byte character
        if len(stable) > len(emitted) and stable.startswith(emitted):
            yield stable[len(emitted) :]
            emitted = stable
    final = tok.decode(new)
    if final.startswith(emitted) and len(final) > len(emitted):
        yield final[len(emitted) :]


@dataclass
class MaskFill:
    """What the MLM predicts at the masked positions.

    Attributes:
        text: The input with every ``[MASK]`` span replaced by its greedy prediction.
        spans: Per ``[MASK]`` span, the greedy prediction of the whole span.
        candidates: Per span, per position, the ``top`` most likely tokens as (text, probability).
    """

    text: str
    spans: list[str] = field(default_factory=list)
    candidates: list[list[list[tuple[str, float]]]] = field(default_factory=list)


def _encode_with_masks(tok, text: str, span: int) -> tuple[list[int], list[list[int]]]:
    """Ids of ``text`` with each ``[MASK]`` (or ``[MASK:n]``) turned into mask ids; the positions
    of each span."""
    ids: list[int] = []
    spans: list[list[int]] = []
    last = 0
    for match in MASK_MARKER.finditer(text):
        ids.extend(int(i) for i in tok.encode(text[last : match.start()]))
        n = int(match.group(1)) if match.group(1) else span
        if n < 1:
            raise ValueError(f"{match.group(0)}: a mask span needs at least one position")
        spans.append(list(range(len(ids), len(ids) + n)))
        ids.extend([tok.mask_id] * n)
        last = match.end()
    ids.extend(int(i) for i in tok.encode(text[last:]))
    if not spans:
        raise ValueError("the text has no [MASK] (or [MASK:n]) to fill")
    return ids, spans


@torch.no_grad()
def fill_mask(loaded: LoadedModel, text: str, span: int | None = None, top: int = 5) -> MaskFill:
    """Greedy predictions and the top candidates at every masked position of ``text``.

    Each ``[MASK]`` stands for ``span`` mask tokens (default: 8 for byte tokenizers, whose tokens
    are single bytes, 1 for SentencePiece); ``[MASK:n]`` sets n for one span. The input is padded
    to the model's ``max_seq_len`` with an attention mask, as HF's fill-mask example does.
    """
    _require(loaded, "perceiver_io_mlm", "fill-mask")
    model, tok = loaded.model, loaded.tokenizer
    if span is None:
        span = 8 if getattr(tok, "name", "") == "byte" else 1
    ids, spans = _encode_with_masks(tok, text, span)
    max_len = model.cfg.max_seq_len
    if len(ids) > max_len:
        raise ValueError(f"the text is {len(ids)} tokens long; the model reads {max_len}")
    device = next(model.parameters()).device
    input_ids = torch.full((1, max_len), tok.pad_id, dtype=torch.long, device=device)
    input_ids[0, : len(ids)] = torch.tensor(ids, device=device)
    attention_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    attention_mask[0, : len(ids)] = True
    flat = [p for positions in spans for p in positions]
    positions = torch.tensor([flat], device=device)
    probs_kv = model(input_ids, attention_mask, output_positions=positions)[0].float().softmax(-1)
    greedy = probs_kv.argmax(-1).tolist()
    top_p, top_i = probs_kv.topk(min(top, probs_kv.shape[-1]), dim=-1)
    result = MaskFill(text="")
    filled = list(ids)
    k = 0
    for positions_of_span in spans:
        predicted = greedy[k : k + len(positions_of_span)]
        for p, token in zip(positions_of_span, predicted):
            filled[p] = token
        result.spans.append(tok.decode(predicted))
        result.candidates.append(
            [
                [(tok.decode([i]), round(float(q), 4)) for q, i in zip(top_p[j], top_i[j].tolist())]
                for j in range(k, k + len(positions_of_span))
            ]
        )
        k += len(positions_of_span)
    result.text = tok.decode(filled)
    return result
