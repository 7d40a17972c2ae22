"""What a bench run does: sections, model sizes and shapes, the options and the defaults per device."""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


SECTIONS = ("matmul", "train", "generate", "dpo", "ppo")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISIONS = {"float32": "32-true", "bfloat16": "bf16-mixed", "float16": "16-mixed"}

# Model sizes as ModelConfig kwargs. "tiny" is configs/pretrain/tiny.yaml's backbone (with its tokenizer's
# vocabulary), "small" the 12M model of reports/generation.md, "gpt2-124m" GPT-2 small's shape (our SwiGLU
# width 2048 keeps it at ~124M parameters; only sensible on a GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, n_layer=4, n_head=4, n_kv_head=2, d_model=128, max_seq_len=256),
    "small": dict(vocab_size=4096, n_layer=6, n_head=6, d_model=384, max_seq_len=512),
    "gpt2-124m": dict(vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
}
# (batch, seq_len) of a training step: the tiny recipe's, then what one device holds comfortably.
TRAIN_SHAPES: dict[str, tuple[int, int]] = {"tiny": (16, 128), "small": (8, 256), "gpt2-124m": (16, 1024)}

Log = Callable[[str], None]


@dataclass
class Settings:
    """Everything a bench run does; defaults per device in `default_settings`, overridden by the options."""

    device: str
    dtype: str
    quick: bool
    matmul_sizes: list[int]
    matmul_reps: int
    sizes: list[str]
    compile: bool  # also time each training size with its blocks compiled (lit_llm.callbacks.Compile)
    train_batch: int | None  # for every size; None = TRAIN_SHAPES
    train_seq_len: int | None
    warmup: int  # untimed training / DPO steps and PPO iterations
    steps: int  # timed ones
    gen_size: str
    gen_batch_sizes: list[int]
    prompt_len: int
    new_tokens: int
    rl_size: str
    dpo_batch_size: int
    dpo_max_length: int
    ppo_batch_size: int
    ppo_mini_batch_size: int
    ppo_epochs: int
    ppo_new_tokens: int


def default_settings(device: str, quick: bool) -> dict[str, Any]:
    """Sizes and repetitions that finish in a few minutes on 2 CPU cores, or exercise a GPU; --quick: seconds."""
    if quick:
        return dict(matmul_sizes=[128, 256], matmul_reps=2, sizes=["tiny"], train_batch=4, train_seq_len=32,
                    warmup=1, steps=2, gen_size="tiny", gen_batch_sizes=[1, 2], prompt_len=16, new_tokens=8,
                    rl_size="tiny", dpo_batch_size=2, dpo_max_length=128, ppo_batch_size=4, ppo_mini_batch_size=4,
                    ppo_epochs=1, ppo_new_tokens=4)
    gpu = device == "cuda"
    return dict(matmul_sizes=[1024, 2048, 4096] if gpu else [512, 1024, 2048], matmul_reps=50 if gpu else 4,
                sizes=["small", "gpt2-124m"] if gpu else ["tiny", "small"], train_batch=None,
                train_seq_len=None, warmup=5 if gpu else 2, steps=20 if gpu else 5, gen_size="small",
                gen_batch_sizes=[1, 8, 64] if gpu else [1, 8], prompt_len=128, new_tokens=128 if gpu else 64,
                rl_size="small" if gpu else "tiny", dpo_batch_size=16, dpo_max_length=128, ppo_batch_size=32,
                ppo_mini_batch_size=16, ppo_epochs=2, ppo_new_tokens=16)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="matmul dtype and training precision (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--sizes", default=None, help=f"comma-separated model sizes of {list(PRESETS)} "
                                                 "(default: tiny,small on CPU, small,gpt2-124m on CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="also time each training size with its blocks compiled (lit_llm.callbacks.Compile, inductor)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch for every size (default per size)")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default per size)")
    p.add_argument("--steps", type=int, default=None, help="timed training/DPO steps and PPO iterations")
    p.add_argument("--gen-batch-sizes", type=int, nargs="+", default=None, help="generation batch sizes")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row")
    p.add_argument("--rl-size", choices=list(PRESETS), default=None, help="model size of the DPO and PPO steps")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--skip", action="append", default=[], help=f"sections to leave out, of {list(SECTIONS)} "
                                                               "(comma-separated or repeated)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (seconds; for tests)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results (default bench.json)")
    p.add_argument("--report", type=Path, default=None, help="also write a markdown report here")
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The device (auto-detected), the dtype's default and the per-device defaults, then the options."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lit-llm bench: --device cuda, but torch sees no CUDA device")
    values = default_settings(device, args.quick)
    overrides = {"sizes": args.sizes.split(",") if args.sizes else None, "train_batch": args.batch_size,
                 "train_seq_len": args.seq_len, "steps": args.steps, "gen_batch_sizes": args.gen_batch_sizes,
                 "new_tokens": args.new_tokens, "rl_size": args.rl_size}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = [s for s in values["sizes"] if s not in PRESETS]
    if unknown:
        raise SystemExit(f"lit-llm bench: unknown sizes {unknown}; known: {list(PRESETS)}")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    return Settings(device=device, dtype=dtype, quick=args.quick, compile=args.compile, **values)


def skipped_sections(skip: list[str]) -> set[str]:
    names = {name.strip() for item in skip for name in item.split(",") if name.strip()}
    unknown = names - set(SECTIONS)
    if unknown:
        raise SystemExit(f"lit-llm bench: unknown --skip {sorted(unknown)}; sections: {list(SECTIONS)}")
    return names
