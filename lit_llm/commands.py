"""lit_llm's own commands beside Lightning's: generate, export, prepare, rejection-sample, pipeline, report, bench.

Each command is a small argparse front over a library function, registered in `COMMANDS` as
name -> (handler(argv), one-line help). Later commands register here too.
"""

import argparse
from collections.abc import Callable

import torch

from lit_llm.checkpoint import load_backbone
from lit_llm.evaluation import generate_texts


def generate_command(argv: list[str]) -> None:
    """Sample a completion from a checkpoint or Hugging Face Llama directory."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm generate", description=generate_command.__doc__)
    parser.add_argument("source", help="a lit_llm .ckpt of any stage, or a Hugging Face Llama-format directory")
    parser.add_argument("--prompt", required=True, action="append",
                        help="prompt text; repeat the flag for a batch of prompts")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt as a user turn of the model's chat template")
    parser.add_argument("--system", default=None, help="system message (with --chat)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else sampling")
    parser.add_argument("--top_k", type=int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = parser.parse_args(argv)
    loaded = load_backbone(args.source)
    tokenizer = loaded.tokenizer
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompts = [tokenizer.render_chat(system + [{"role": "user", "content": p}], add_generation_prompt=True)[0]
                   for p in args.prompt]
        stop = tokenizer.chat_stop_ids()
    else:
        prompts = [tokenizer.encode(p, bos=tokenizer.bos_id is not None) for p in args.prompt]
        stop = [tokenizer.eos_id]
    generator = torch.Generator().manual_seed(args.seed)
    texts = generate_texts(loaded.model, tokenizer, prompts, args.max_new_tokens, stop,
                           temperature=args.temperature, generator=generator,
                           top_k=args.top_k, top_p=args.top_p)
    for prompt, text in zip(args.prompt, texts):
        print(f"{prompt}{text}" if not args.chat else text)


def export_command(argv: list[str]) -> None:
    """Write a checkpoint's backbone and tokenizer as a Hugging Face Llama-format directory."""
    from lit_llm.hf import export_hf

    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm export", description=export_command.__doc__)
    parser.add_argument("checkpoint", help="a lit_llm .ckpt of any stage")
    parser.add_argument("out_dir", help="directory to write config.json, model.safetensors, tokenizer.json, ...")
    args = parser.parse_args(argv)
    loaded = load_backbone(args.checkpoint)
    export_hf(loaded.model, loaded.tokenizer, args.out_dir)
    print(f"wrote {args.out_dir} (stage {loaded.stage}, {loaded.model.num_params():,} parameters)")


def prepare_command(argv: list[str]) -> None:
    """Clean, deduplicate, filter and mix text sources, train the tokenizer, write token shards."""
    from lit_llm.data.prepare import prepare_command as run_prepare  # heavy imports (datasketch, langid) on use

    run_prepare(argv)


def rejection_sample_command(argv: list[str]) -> None:
    """Best-of-n rejection sampling: SFT data and preference pairs from a policy's scored samples."""
    from lit_llm.rejection import main as run_rejection  # loads models and MLflow only when used

    run_rejection(argv)


def pipeline_command(argv: list[str]) -> None:
    """Run a pipeline recipe: stages in order, resuming where it stopped, one MLflow pipeline run."""
    from lit_llm.pipeline import main as run_pipeline  # imports the stages only when used

    run_pipeline(argv)


def report_command(argv: list[str]) -> None:
    """Write REPORT.md and plots from MLflow runs, or check a fresh run against reported values."""
    from lit_llm.report import main as run_report  # matplotlib only when used

    run_report(argv)


def bench_command(argv: list[str]) -> None:
    """Measure this machine: matmul peak, training tokens/s and MFU, KV-cache generation, DPO and PPO steps."""
    from lit_llm.bench import main as run_bench  # imports every stage only when used

    run_bench(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "generate": (generate_command, "complete a prompt with a checkpoint or HF directory"),
    "export": (export_command, "checkpoint -> Hugging Face Llama directory"),
    "prepare": (prepare_command, "clean, dedup, filter, mix, tokenize"),
    "rejection-sample": (rejection_sample_command, "best-of-n samples -> SFT data and preference pairs"),
    "pipeline": (pipeline_command, "run a recipe's stages in order (configs/pipeline/)"),
    "report": (report_command, "MLflow runs -> REPORT.md + plots; --check reported values"),
    "bench": (bench_command, "matmul peak, train tokens/s + MFU, generation, DPO/PPO step time"),
}
