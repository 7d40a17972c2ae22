"""Commands that use a model: `lit-llm generate` (a completion from a checkpoint or Hugging Face model) and
`lit-llm export` (a checkpoint as a Hugging Face directory of its family)."""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from lit_llm.checkpoint import backbone_state, checkpoint_stage_meta, load_backbone, read_checkpoint
from lit_llm.evaluation import generate_texts
from lit_llm.hf import export_hf
from lit_llm.hf.weights import DTYPES, dtype_of, readable_like_the_rest
from lit_llm.lora import LoRAConfig, adapter_config_hf, adapter_state_hf


def generate_command(argv: list[str]) -> None:
    """Sample a completion from a checkpoint, a Hugging Face directory or a hub id."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm generate", description=generate_command.__doc__)
    parser.add_argument("source", help="a lit_llm .ckpt of any stage, a Hugging Face directory, or a hub id "
                                       "(hf:Qwen/Qwen2.5-0.5B-Instruct)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES),
                        help="a Hugging Face model's dtype in memory (default: as stored)")
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
    loaded = load_backbone(args.source, dtype=args.dtype)
    tokenizer = loaded.tokenizer
    if args.chat:
        prompts = [tokenizer.render_prompt(p, args.system) for p in args.prompt]
        stop = tokenizer.chat_stop_ids()
    else:
        prompts = [tokenizer.encode(p, bos=tokenizer.add_bos) for p in args.prompt]
        stop = tokenizer.eos_ids()
    generator = torch.Generator().manual_seed(args.seed)
    texts = generate_texts(loaded.model, tokenizer, prompts, args.max_new_tokens, stop,
                           temperature=args.temperature, generator=generator,
                           top_k=args.top_k, top_p=args.top_p)
    for prompt, text in zip(args.prompt, texts):
        print(f"{prompt}{text}" if not args.chat else text)


def parse_size(text: str) -> int:
    """Bytes from "5GB", "500MB", "40KB" (powers of 1000, as transformers' max_shard_size) or a plain number."""
    units = {"GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, scale in units.items():
        if text.upper().endswith(unit):
            number = text[: -len(unit)]
            break
    else:
        number, scale = text, 1
    try:
        return int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 5GB, 500MB or 40000, got {text!r}") from None


def export_command(argv: list[str]) -> None:
    """Write a checkpoint's backbone and tokenizer as a Hugging Face directory of its family (Llama, Qwen2, ...)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm export", description=export_command.__doc__)
    parser.add_argument("checkpoint", help="a lit_llm .ckpt of any stage")
    parser.add_argument("out_dir", help="directory to write config.json, model.safetensors, tokenizer.json, ...")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES),
                        help="dtype of the written weights (default: the checkpoint's)")
    parser.add_argument("--max_shard_size", default=None, type=parse_size,
                        help="write shards of at most this size with model.safetensors.index.json (e.g. 5GB)")
    parser.add_argument("--adapter_only", action="store_true",
                        help="of a LoRA checkpoint, write only its adapters as a peft adapter folder "
                             "(peft.PeftModel.from_pretrained on the exported base); default: merge them")
    args = parser.parse_args(argv)
    if args.adapter_only:
        return export_adapter(args.checkpoint, args.out_dir, args.dtype)
    loaded = load_backbone(args.checkpoint)  # a LoRA checkpoint comes back merged onto its base
    export_hf(loaded.model, loaded.tokenizer, args.out_dir, dtype=args.dtype, max_shard_size=args.max_shard_size)
    print(f"wrote {args.out_dir} (stage {loaded.stage}, {loaded.model.num_params():,} parameters)")


def export_adapter(checkpoint_path: str, out_dir: str, dtype: str | None) -> None:
    """Write a LoRA checkpoint's adapters as a peft adapter folder: adapter_config.json (Hugging Face module
    names, the base's source as `base_model_name_or_path`) and adapter_model.safetensors."""
    checkpoint = read_checkpoint(checkpoint_path)
    meta = checkpoint_stage_meta(checkpoint, checkpoint_path)
    if "lora" not in meta:
        raise ValueError(f"{checkpoint_path} was trained without LoRA: it has no adapters (export it without "
                         f"--adapter_only)")
    base = meta["lora"]["bases"]["model"]["source"]
    tensors = adapter_state_hf(backbone_state(checkpoint["state_dict"]))
    if dtype is not None:
        tensors = {name: tensor.to(dtype_of(dtype)) for name, tensor in tensors.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter_config_hf(LoRAConfig(**meta["lora"]["config"]), base).save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    readable_like_the_rest(out / "adapter_model.safetensors")
    print(f"wrote {out_dir}: {len(tensors)} adapter tensors of the base {base}; load them with "
          f"peft.PeftModel.from_pretrained(<that base exported with lit-llm export>, {out_dir!r})")
