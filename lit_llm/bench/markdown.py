"""The bench's markdown report: machine and load, a table per section, the command."""

from typing import Any

from lit_llm.bench.settings import PRECISIONS


# ----------------------------------------------------------------------------------------------- report
def format_flops(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def format_share(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def machine_lines(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["settings"]
    where = f"{m['cpu']}, {m['cpu_cores']} cores" + (" (virtual machine)" if m.get("virtual_machine") else "")
    if m.get("gpu"):
        where = f"{m['gpu']} (CUDA {m['cuda']}) beside {where}"
    return [f"- Machine: {where}; {m['os']}; Python {m['python']}, torch {m['torch']}, "
            f"torch threads {m['torch_threads']}; git {m['git_sha'][:10]}.",
            f"- Device {s['device']}, dtype {s['dtype']} (training precision {PRECISIONS[s['dtype']]}); "
            f"started {result['started_utc']}, {result['seconds']:.0f} s in all.",
            f"- 1-minute load average {result['load_avg_start'][0]:.2f} at start, {result['load_avg_end'][0]:.2f} "
            f"at end (5-minute {result['load_avg_start'][1]:.2f} → {result['load_avg_end'][1]:.2f}). The machine "
            f"may be shared with other jobs: a load above the core count means they competed for the cores, "
            f"and the numbers below are then lower than the machine's own."]


def matmul_table(matmul: dict[str, Any]) -> list[str]:
    lines = [f"## Matmul peak ({matmul['dtype']})", "", "| n | time per matmul | FLOP/s |", "|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['seconds'] * 1e3:.2f} ms | {format_flops(r['flops'])} |" for r in matmul["rows"]]
    return lines + ["", f"**peak_flops = {format_flops(matmul['peak_flops'])}** (best of {len(matmul['rows'])} "
                        f"sizes; each the best of 3 timings of {matmul['reps']} back-to-back matmuls)."]


def train_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Training (PretrainLM step: forward, loss, backward, clipping, AdamW)", "",
             "| size | params | batch × seq_len | step | tokens/s | FLOPs/token | achieved | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']}{' (compiled)' * r.get('compiled', False)} | {r['params'] / 1e6:.2f}M "
              f"| {r['batch']} × {r['seq_len']} | {r['step_s'] * 1e3:.1f} ms "
              f"| {r['tokens_per_s']:,.0f} | {r['flops_per_token'] / 1e6:.1f}M | {format_flops(r['achieved_flops'])} "
              f"| {format_share(r['mfu'])} |" for r in rows]
    return lines + ["", f"Median of {rows[0]['steps']} timed steps after warm-up; MFU = FLOPs/token × tokens/s ÷ "
                        "peak_flops; (compiled): each block through torch.compile (the Compile callback), the "
                        "compilation in the warm-up."]


def generation_table(rows: list[dict[str, float]]) -> str:
    """Markdown table of `generation_rows`."""
    lines = ["| batch | cached tok/s | uncached tok/s | speedup | cached s | uncached s |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch_size']} | {r['cached_tok_s']:.1f} | {r['uncached_tok_s']:.1f} | {r['speedup']:.2f}x "
              f"| {r['cached_s']:.2f} | {r['uncached_s']:.2f} |" for r in rows]
    return "\n".join(lines)


def generate_section(gen: dict[str, Any]) -> list[str]:
    return [f"## Generation (greedy, KV cache vs none; {gen['size']}, {gen['params'] / 1e6:.1f}M params)", "",
            f"Random {gen['prompt_len']}-token prompts, {gen['new_tokens']} new tokens per row, no eos; one timed "
            "call per setting after a 4-token warm-up; tokens/s includes the prompt's prefill.", "",
            generation_table(gen["rows"])]


def rl_section(result: dict[str, Any]) -> list[str]:
    lines = ["## DPO and PPO steps", "", "| step | model | batch | time | split |", "|---|---|---|---:|---|"]
    if "dpo" in result:
        d = result["dpo"]
        lines.append(f"| DPO (policy + reference forward, backward, AdamW) | {d['size']}, {d['params'] / 1e6:.2f}M "
                     f"| {d['pairs']} pairs = {d['rows']:.0f} rows × {d['columns']:.0f} tokens "
                     f"| {d['step_s'] * 1e3:.1f} ms | {d['pairs_per_s']:.1f} pairs/s |")
    if "ppo" in result:
        p = result["ppo"]
        split = " / ".join(f"{p[f'time_{k}_s'] * 1e3:.0f}" for k in ("generate", "score", "update"))
        lines.append(f"| PPO iteration (ppo_epochs {p['ppo_epochs']}, mini-batches of {p['mini_batch_size']}) "
                     f"| {p['size']}, {p['params'] / 1e6:.2f}M | {p['prompts']} prompts, ≤ {p['max_new_tokens']} "
                     f"new tokens (mean {p['response_length']:.1f}) | {p['step_s'] * 1e3:.0f} ms "
                     f"| generate / score / update {split} ms |")
    return lines + ["", "Random backbones with the byte-level tokenizer on task-world pairs and prompts; medians "
                        "after warm-up. PPO has a separate value model; the reward model is a random head."]


def markdown_report(result: dict[str, Any]) -> str:
    """The report: machine and load, then a table per section, and the command that reproduces it."""
    lines = ["# Performance: `lit-llm bench`", "", f"    {result['command']}", "", *machine_lines(result)]
    if result["settings"]["device"] == "cpu":
        lines.append("- CPU only: bf16 and GPU numbers (the gpt2-124m MFU among them) need a run of the same "
                     "command on a GPU machine.")
    if "matmul" in result:
        lines += ["", *matmul_table(result["matmul"])]
    if "train" in result:
        lines += ["", *train_table(result["train"])]
    if "generate" in result:
        lines += ["", *generate_section(result["generate"])]
    if "dpo" in result or "ppo" in result:
        lines += ["", *rl_section(result)]
    return "\n".join(lines) + "\n"
