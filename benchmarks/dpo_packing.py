"""DPO's two levers on its rows (`lit_llm.shared_prefix`), each as an A/B in one process.

- Packing: A is two passes (the prompts, then the responses on their prompt's cached keys/values), B one pass over
  packed rows (a prompt, then its responses, under a tree mask): what `shared_prefix_target_logprobs` does for rows
  of at most `PACKED_MAX_TOKENS` tokens.
- Skipping the padding: A runs the padded rows through every layer, B the position-wise work (projections, norms,
  RoPE, MLP) on the real tokens only (`SKIP_PADDING`, `Transformer.hidden_states(skip_padding=True)`).

Each round runs both on the same batches, alternating which goes first; the ratio is A's time ÷ B's (above 1: the
lever pays). The other lever stays as the package sets it.

- DPO steps: `DPOModule.compute` (policy and, unless precomputed, reference log-probs; the loss), backward and the
  fused AdamW over 24 batches of 16 task-world pairs, on `dpo_vs_trl.py`'s random tiny model.
- Longer rows: the policy's forward and backward alone on random 12M-parameter models (the `small` preset) with
  synthetic pairs, where packing's larger attention starts to cost more than its fewer kernels save.

    python benchmarks/dpo_packing.py --rounds 9 --out /tmp/sbs/dpo_packing.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lit_llm import shared_prefix
from lit_llm.bench.settings import PRESETS
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.losses import IGNORE_INDEX
from lit_llm.model import ModelConfig, Transformer
from lit_llm.shared_prefix import shared_prefix_target_logprobs
from lit_llm.stages.dpo import DPOModule
from lit_llm.tracking import cpu_model

sys.path.insert(0, os.path.dirname(__file__))
from dpo_vs_trl import setup  # noqa: E402

PACK_ALWAYS = 1 << 30  # packs rows of any length
PACKED_DEFAULT = shared_prefix.PACKED_MAX_TOKENS


def packing(on: bool) -> None:
    shared_prefix.PACKED_MAX_TOKENS = PACK_ALWAYS if on else 0


def skipping_padding(on: bool) -> None:
    shared_prefix.SKIP_PADDING = on


def both_passes_skipping(on: bool) -> None:
    """The longer rows in two passes (as `PACKED_MAX_TOKENS` runs them), padding skipped (B) or not (A)."""
    shared_prefix.PACKED_MAX_TOKENS, shared_prefix.SKIP_PADDING = 0, on


def ab(run: Callable[[], None], lever: Callable[[bool], None], rounds: int) -> dict:
    """Times of `run` without the lever (A) and with it (B), alternating; the median ratio A ÷ B and its range."""
    def timed(on: bool) -> float:
        lever(on)
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    timed(False), timed(True)  # warm-up
    a, b = [], []
    for r in range(rounds):
        for on, times in ((False, a), (True, b))[:: 1 if r % 2 else -1]:
            times.append(timed(on))
    shared_prefix.PACKED_MAX_TOKENS, shared_prefix.SKIP_PADDING = PACKED_DEFAULT, True
    ratios = [x / y for x, y in zip(a, b)]
    return {"a_s": statistics.median(a), "b_s": statistics.median(b), "ratio": statistics.median(ratios),
            "range": [min(ratios), max(ratios)], "rounds": rounds}


def dpo_steps(work: Path, precompute: bool) -> Callable[[], None]:
    """24 DPO steps of the real stage's compute on the benchmark's model and pairs."""
    module = DPOModule(init_from=str(work / "model"))
    data = PreferenceDataModule(source=str(work / "pairs.jsonl"), val_source=str(work / "val.jsonl"),
                                max_length=128, batch_size=16)
    data.tokenizer = module.tokenizer
    data.setup("fit")
    batches = list(DataLoader(data.datasets["train"], batch_size=16, collate_fn=data.collator()))[:24]
    if precompute:
        module.ref_cache = module.precompute([batches])
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-6, fused=True)

    def run() -> None:
        for batch in batches:
            module.compute(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return run


def synthetic_pairs(vocab: int, prompts: int, prompt_len: int, response_len: int, seed: int) -> dict:
    """A DPO-shaped batch: each prompt (length in [P/2, P]) with 2 responses (lengths in [C/2, C]), right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for _ in range(prompts):
        prompt = torch.randint(vocab, (int(torch.randint(prompt_len // 2, prompt_len + 1, (), generator=g)),),
                               generator=g)
        for _ in range(2):
            n = int(torch.randint(response_len // 2, response_len + 1, (), generator=g))
            row = torch.cat([prompt, torch.randint(vocab, (n,), generator=g)])
            label = torch.full_like(row, IGNORE_INDEX)
            label[len(prompt) - 1:-1] = row[len(prompt):]
            rows.append(row)
            labels.append(label)
    T = max(map(len, rows))
    return {"input_ids": torch.stack([torch.nn.functional.pad(r, (0, T - len(r))) for r in rows]),
            "labels": torch.stack([torch.nn.functional.pad(x, (0, T - len(x)), value=IGNORE_INDEX) for x in labels]),
            "prompt_index": torch.arange(prompts).repeat_interleave(2)}


def policy_passes(prompts: int, prompt_len: int, response_len: int) -> Callable[[], None]:
    """Forward and backward of the summed target log-probs of 3 synthetic batches on a random `small` model."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**PRESETS["small"])).train()
    batches = [synthetic_pairs(model.config.vocab_size, prompts, prompt_len, response_len, seed) for seed in range(3)]

    def run() -> None:
        for b in batches:
            shared_prefix_target_logprobs(model, b["input_ids"], b["labels"], b["prompt_index"]).sum().backward()
            model.zero_grad(set_to_none=True)
    return run


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default="dpo_packing.json")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    work = Path(tempfile.mkdtemp(prefix="dpo_packing_"))
    setup(work, 2000)
    dpo = [(f"DPO step, tiny model, 16 task-world pairs, reference {mode}", threads,
            lambda mode=mode: dpo_steps(work, mode == "precomputed"))
           for mode in ("forward every step", "precomputed") for threads in (1, 2)]
    longer = [(f"policy forward + backward, 12M model, {u} prompts of ≤ {pl} + 2 responses of ≤ {rl} tokens "
               f"(packed rows ≤ {pl + 2 * rl})", 2, lambda u=u, pl=pl, rl=rl: policy_passes(u, pl, rl))
              for u, pl, rl in ((8, 200, 60), (4, 400, 120))]
    cases = [("packing (A: two passes, B: packed)", packing, *case) for case in dpo + longer]
    cases += [("skipping the padding (A: padded, B: skipped)", skipping_padding, *case) for case in dpo]
    cases += [("skipping the padding (A: padded, B: skipped), two passes", both_passes_skipping, *case)
              for case in longer]
    result = {"command": "python " + " ".join(sys.argv), "cpu": cpu_model(), "torch": torch.__version__,
              "load_avg_start": os.getloadavg(), "packed_max_tokens": PACKED_DEFAULT, "rows": []}
    for lever_name, lever, name, threads, make in cases:
        torch.set_num_threads(threads)
        row = {"lever": lever_name, "case": name, "threads": threads, **ab(make(), lever, args.rounds)}
        result["rows"].append(row)
        print(f"{lever_name}; {name}, {threads} thread(s): A {row['a_s']:.3f} s, B {row['b_s']:.3f} s, "
              f"{row['ratio']:.2f}x ({row['range'][0]:.2f}-{row['range'][1]:.2f})", flush=True)
    result["load_avg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
