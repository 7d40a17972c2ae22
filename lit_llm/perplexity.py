"""`lit-llm perplexity`: loss and perplexity of a model on a text file, with the model's own tokenizer: the check
users run after importing a checkpoint (an imported Qwen or Llama should score natural text far better than
chance, and the same as `transformers` on the same windows).

The text is one token stream (bos first when the model's tokenizer adds one) cut into windows of `window` tokens
that advance by `stride` (Hugging Face's "perplexity of fixed-length models"): every token after the first is
scored once, with at least `window - stride` tokens of context except in the first window (with `stride ==
window` the windows abut and each window's first token goes unscored).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from lit_llm.checkpoint import load_backbone
from lit_llm.hf.weights import DTYPES
from lit_llm.losses import token_logprobs
from lit_llm.model import Transformer


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a stream of `n_tokens` tokens; position p is
    scored as the prediction of token p from the tokens before it, so position 0 never is."""
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    spans, scored_until = [], 1
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        if end == n_tokens:
            break
    return spans


@torch.no_grad()
def text_nll(model: Transformer, ids: list[int], window: int, stride: int, batch_size: int = 8) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the scored tokens of `ids`, and how many were scored."""
    device = next(model.parameters()).device
    stream = torch.tensor(ids, dtype=torch.long)
    spans = windows(len(ids), window, stride)
    total, count = 0.0, 0
    for start in range(0, len(spans), batch_size):
        for length in sorted({end - begin for begin, end, _ in spans[start : start + batch_size]}):
            group = [s for s in spans[start : start + batch_size] if s[1] - s[0] == length]
            x = torch.stack([stream[begin:end] for begin, end, _ in group]).to(device)
            logp = token_logprobs(model(x[:, :-1]), x[:, 1:])  # logp[:, t] scores position t + 1
            for row, (begin, _, first) in zip(logp, group):
                scored = row[first - begin - 1 :]
                total -= scored.sum().item()
                count += scored.numel()
    return total, count


def perplexity_command(argv: list[str]) -> None:
    """Loss and perplexity of a checkpoint or Hugging Face model on a text file, with its own tokenizer."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm perplexity",
                                     description=perplexity_command.__doc__)
    parser.add_argument("source", help="a lit_llm .ckpt, a Hugging Face directory, or a hub id (hf:Qwen/Qwen2.5-0.5B)")
    parser.add_argument("--text", required=True, help="a UTF-8 text file, scored as one stream")
    parser.add_argument("--window", type=int, default=None, help="tokens per forward (default: the model's context)")
    parser.add_argument("--stride", type=int, default=None, help="tokens a window advances (default: window / 2)")
    parser.add_argument("--max_tokens", type=int, default=None, help="score only the first N tokens of the file")
    parser.add_argument("--batch_size", type=int, default=8, help="windows per forward (default 8)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES),
                        help="a Hugging Face model's dtype in memory (default: as stored)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    args = parser.parse_args(argv)
    text_file = Path(args.text)
    if not text_file.is_file():
        raise SystemExit(f"lit-llm perplexity: --text {text_file}: no such file")
    raw = text_file.read_bytes()
    loaded = load_backbone(args.source, dtype=args.dtype)
    model = loaded.model.to(args.device).eval()
    ids = loaded.tokenizer.encode(raw.decode("utf-8"), bos=loaded.tokenizer.add_bos)
    ids = ids[: args.max_tokens] if args.max_tokens else ids
    if len(ids) < 2:
        raise SystemExit(f"lit-llm perplexity: {text_file} has {len(ids)} token(s); at least 2 are needed")
    window = args.window or model.config.max_seq_len
    nll, count = text_nll(model, ids, window, args.stride or max(window // 2, 1), args.batch_size)
    whole_file = args.max_tokens is None  # bits per byte only when every byte was scored
    result = {"source": str(args.source), "text": str(text_file), "tokens": count, "loss": nll / count,
              "perplexity": math.exp(nll / count), "window": window,
              "bits_per_byte": nll / math.log(2) / len(raw) if whole_file else None}
    if args.json:
        print(json.dumps(result))
    else:
        bpb = "" if result["bits_per_byte"] is None else f", {result['bits_per_byte']:.4f} bits/byte"
        print(f"{text_file}: {count:,} tokens scored, loss {result['loss']:.4f} nats/token, "
              f"perplexity {result['perplexity']:.3f}{bpb} ({args.source}, window {window})")
