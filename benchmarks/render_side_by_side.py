"""Write reports/side_by_side.md from the JSON files of the side-by-side benchmarks (never typed by hand).

    python benchmarks/render_side_by_side.py --speed /tmp/sbs/speed.json --model-only /tmp/sbs/speed.json \
        --loss /tmp/sbs/loss.json --generation /tmp/sbs/gen_vs_hf.json /tmp/sbs/gen_vs_hf_t2.json \
        --dpo /tmp/sbs/dpo_vs_trl.json /tmp/sbs/dpo_vs_trl_precompute.json /tmp/sbs/dpo_vs_trl_t2.json \
        --startup /tmp/sbs/startup.json --levers /tmp/sbs/levers.json --notes benchmarks/side_by_side_notes.md \
        --out reports/side_by_side.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from render_shapes import cpu_of, plot_shapes, shapes_section  # this folder, first on sys.path


def elsewhere(results: list[dict], cpu: str) -> list[str]:
    """A line under a section measured on another CPU than the report's."""
    others = sorted({cpu_of(result) for result in results} - {cpu})
    return [f"Measured on {' and '.join(others)}, not on the {cpu} of the report's other tables: compare its rows "
            "with each other, not with theirs.", ""] if others else []


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def load_line(result: dict) -> str:
    start, end = result["load_avg_start"][0], result["load_avg_end"][0]
    return f"1-minute load average {start:.2f} at the start, {end:.2f} at the end (2 cores)"


def speed_section(result: dict) -> list[str]:
    rows = result["speed"]
    compiled = "compiled_tokens_per_s" in rows[0]
    lines = ["## Training speed: nanoGPT vs PretrainLM (A/B interleaved)", "",
             f"    python {result['command']}", "",
             f"nanoGPT commit `{result['nanogpt_commit'][:12]}` (run as its README runs it on a CPU: "
             f"`--device=cpu --compile=False`); torch {result['torch']}, {result['threads']} threads; "
             f"{load_line(result)}.", ""]
    head = "| round | nanoGPT tokens/s | lit_llm tokens/s | lit_llm / nanoGPT |"
    head += " lit_llm compiled tokens/s | compiled / nanoGPT |" if compiled else ""
    lines += [head + " load |", "|---:" * head.count("|") + "|"]  # the head's columns and the load
    for r in rows:
        line = (f"| {r['round']} | {r['nanogpt_tokens_per_s']:,.0f} | {r['ours_tokens_per_s']:,.0f} | "
                f"{r['ratio']:.3f} |")
        if compiled:
            line += f" {r['compiled_tokens_per_s']:,.0f} | {r['compiled_ratio']:.3f} |"
        lines.append(line + f" {r['load_avg']:.2f} |")
    lines += [""] + [ratio_line(rows, key, name) for key, name in
                     (("ratio", "lit_llm / nanoGPT"), ("compiled_ratio", "lit_llm compiled / nanoGPT"))
                     if key in rows[0]]
    if compiled:
        lines.append(f"Time from the start of `fit` to the end of the first step (median): eager "
                     f"{statistics.median(r['ours_first_step_s'] for r in rows):.1f} s, compiled "
                     f"{statistics.median(r['compiled_first_step_s'] for r in rows):.1f} s (compilation included).")
    return lines + [""]


def ratio_line(rows: list[dict], key: str, name: str) -> str:
    ratios = [r[key] for r in rows]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (f"**Median ratio {name}: {statistics.median(ratios):.3f}** (quartiles {q[0]:.3f} – {q[2]:.3f}, "
            f"{len(ratios)} rounds).\n")


def model_only_section(result: dict) -> list[str]:
    rows = result["model_only"]
    ratios = [r["ratio"] for r in rows]
    lines = ["### The models alone (same plain PyTorch loop, same batches)", "", f"    python {result['command']}", "",
             "Forward, loss, backward, clipping and AdamW in one loop written the same way for both, on identical "
             f"random batches, alternating; {load_line(result)}.", "",
             "| round | nanoGPT GPT tokens/s | lit_llm Transformer tokens/s | lit_llm / nanoGPT |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['nanogpt_tokens_per_s']:,.0f} | {r['ours_tokens_per_s']:,.0f} | "
                     f"{r['ratio']:.3f} |")
    return lines + ["", f"**Median ratio of the models alone: {statistics.median(ratios):.3f}** "
                        f"({len(ratios)} rounds).", ""]


def loss_section(result: dict, speed: dict) -> list[str]:
    nano, ours = result["loss"]["nanogpt"], result["loss"]["ours"]
    ours_loss = {int(k) + 1: v for k, v in ours["val_loss"].items()}  # MLflow step 249 = after 250 updates
    nano_loss = {int(k): v for k, v in nano["val_loss"].items()}
    shown = sorted(s for s in set(nano_loss) | set(ours_loss) if s % 250 == 0)  # every 250 steps, however dense
    lines = ["## Validation loss at equal steps", "", f"    python {result['command']}", "",
             f"Parameters: nanoGPT {nano['params'] / 1e6:.3f}M (its count, without the position table), lit_llm "
             f"{ours['params']:,} (MLflow run `{ours['mlflow_run_id']}`); {load_line(result)}.", "",
             "| step | nanoGPT val loss (estimate, random val batches) | lit_llm val loss (whole val split) |",
             "|---:|---:|---:|"]
    for s in shown:
        a = f"{nano_loss[s]:.4f}" if s in nano_loss else "–"
        b = f"{ours_loss[s]:.4f}" if s in ours_loss else "–"
        lines.append(f"| {s} | {a} | {b} |")
    return lines + [""] + time_to_loss_lines(nano_loss, ours_loss, speed["speed"])


def steps_to_reach(curve: dict[int, float], target: float) -> float | None:
    """Steps a val-loss curve takes to reach `target`, linearly interpolated between its evaluations."""
    previous = None
    for step in sorted(curve):
        if curve[step] <= target:
            if previous is None:
                return float(step)
            s0, l0 = previous
            return s0 + (step - s0) * (l0 - target) / (l0 - curve[step])
        previous = (step, curve[step])
    return None


def time_to_loss_lines(nano_loss: dict[int, float], ours_loss: dict[int, float], rows: list[dict]) -> list[str]:
    """Wall time to nanoGPT's final val loss, from the loss curves and the speed table's median tokens/s ratio."""
    last = max(nano_loss)
    target, steps = nano_loss[last], steps_to_reach(ours_loss, nano_loss[last])
    if steps is None or not rows:
        return []
    evaluated = sorted(ours_loss)
    interval = min(b - a for a, b in zip(evaluated, evaluated[1:]))
    out = (f"**Time to nanoGPT's final val loss** ({target:.4f} after its {last} steps): lit_llm reaches it after "
           f"{steps:.0f} steps ({steps / last:.0%} of nanoGPT's; linear between its evaluations every {interval} "
           f"steps, in a run whose learning rate decays over {max(ours_loss)} steps). With the speed table's median "
           f"tokens/s ratio, nanoGPT's wall time to that loss ÷ lit_llm's: ")
    parts = []
    for key, name in (("ratio", "eager"), ("compiled_ratio", "compiled")):
        if key in rows[0]:
            ratio = statistics.median(r[key] for r in rows)
            parts.append(f"{last / steps * ratio:.2f}× {name} ({last} / {steps:.0f} steps × {ratio:.3f})")
    return [out + ", ".join(parts) + ". This is not the tokens/s at equal steps the speed table measures.", ""]


def generation_section(results: list[dict]) -> list[str]:
    """One table row per (thread count, batch size): one JSON file of the benchmark per thread count."""
    first = results[0]
    compiled = "compiled_ratio_median" in first["rows"][0]
    loads = "; ".join(f"{r['threads']} thread(s): {load_line(r)}" for r in results)
    lines = ["## Generation: lit_llm's KV cache vs transformers' generate (same exported weights)", ""]
    lines += [f"    {r['command']}" for r in results]
    lines += ["", f"{first['params']:,}-parameter random backbone exported with `lit-llm export`'s code and loaded "
              f"by transformers {first['transformers']} (`LlamaForCausalLM`, SDPA attention); greedy, no eos; both "
              f"produced the same tokens in every round; torch {first['torch']}; {loads}.", "",
              "| threads | batch | lit_llm tokens/s | transformers tokens/s | lit_llm speed ÷ transformers (median of "
              "rounds) |" + " lit_llm compiled decode tokens/s | compiled ÷ transformers | first compiled call "
              "(compiles) |" * compiled, "|---:" * (8 if compiled else 5) + "|"]
    for result in results:
        for r in result["rows"]:
            line = (f"| {result['threads']} | {r['batch']} | {r['ours_tokens_per_s']:.1f} | "
                    f"{r['transformers_tokens_per_s']:.1f} | {r['ratio_median']:.2f}x |")
            if compiled:
                line += (f" {r['compiled_tokens_per_s']:.1f} | {r['compiled_ratio_median']:.2f}x | "
                         f"{r['first_compiled_call_s']:.1f} s |")
            lines.append(line)
    return lines + [""]


def dpo_section(results: list[dict]) -> list[str]:
    """One table row per run: its mode (reference forward every step, precomputed reference log-probs) and threads."""
    first = results[0]
    trl = first["versions"]["trl_env"]
    lines = ["## DPO: lit_llm's DPOModule vs TRL's DPOTrainer (same model, same tokens, alternating processes)", ""]
    # each command without python's path
    lines += [f"    python {r['command'].split(' ', 1)[1]}   # on {cpu_of(r)}" for r in results]
    lines += ["", f"A random tiny Llama (the `tiny` preset) exported by `lit-llm export`'s code, the same 2,000 task-world "
              f"pairs in file order, batch 16 pairs, max length 128, β 0.1, float32, constant LR, the same AdamW, "
              f"clipping 1.0; TRL {trl['trl']} with transformers {trl['transformers']} in its own environment "
              f"(torch {trl['torch']}); the threads column is torch's threads in each process; the first batch's "
              f"tokens and a digest of all pairs are asserted equal, the first loss is ln 2 on both sides, and the "
              f"losses agree at every step (largest difference in the column).", "",
              "| CPU | lit_llm commit | reference log-probs | threads | rounds | TRL pairs/s | lit_llm pairs/s | "
              "lit_llm ÷ TRL (median of rounds; their range) | reference precompute TRL / lit_llm | max loss "
              "difference | load |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        pre = r.get("median_precompute_s")
        rounds = r["rounds"]
        load = f"{min(x['trl_load_start'] for x in rounds):.2f}–{max(x['ours_load_end'] for x in rounds):.2f}"
        pre_text = f"{pre['trl']:.1f} s / {pre['ours']:.1f} s" if pre else "–"
        mode = "precomputed" if r["precompute"] else "forward every step"
        ratios = [x["ratio"] for x in rounds]
        commit = r["versions"]["ours"]["repo"]
        lines.append(f"| {cpu_of(r)} | `{commit}` | {mode} | {r['threads']} | {len(rounds)} | "
                     f"{r['median_pairs_per_s']['trl']:.1f} | {r['median_pairs_per_s']['ours']:.1f} | "
                     f"{r['median_ratio']:.2f}x ({min(ratios):.2f}–{max(ratios):.2f}) | {pre_text} | "
                     f"{r['max_abs_loss_diff']:.1e} | {load} |")
    return lines + [""]


def startup_section(result: dict, others: list[dict]) -> list[str]:
    """The start-up table of one run (`result`), then the medians of runs on other VMs (`others`), one row each."""
    lines = ["## Start-up: the CLI to its help, and `lit-llm fit` to the end of its first step", "",
             f"    {result['command']}", "",
             f"Fresh processes (imports, config, MLflow run, data, model, DPO's reference precompute, the sanity "
             f"validation); median of {len(result['rows'][0]['seconds'])}; {load_line(result)}.", ""]
    if result.get("baseline"):
        lines += [f"Each case alternates with commit `{result['baseline'][:12]}` (its checkout first on PYTHONPATH), "
                  f"round by round; the speed-up is the median of the rounds' baseline ÷ this commit.", "",
                  "| command | median | all | baseline median | baseline all | speed-up |",
                  "|---|---:|---|---:|---|---:|"]
    else:
        lines += ["| command | median | all |", "|---|---:|---|"]
    for r in result["rows"]:
        line = f"| {r['case']} | {r['median_s']:.2f} s | {', '.join(f'{t:.2f}' for t in r['seconds'])} |"
        if result.get("baseline"):
            line += (f" {r['baseline_median_s']:.2f} s | {', '.join(f'{t:.2f}' for t in r['baseline_seconds'])} | "
                     f"{r['speedup']:.2f}× |")
        lines.append(line)
    return lines + [""] + startup_elsewhere(others)


def startup_elsewhere(results: list[dict]) -> list[str]:
    """One row per run on another VM: the median of each case (new / existing MLflow store)."""
    if not results:
        return []
    stages = ("pretrain", "sft", "dpo")
    lines = ["### The same cases on other VMs", "",
             "Medians to the end of step 1, with a new MLflow store / an existing one. The commit is the one "
             "measured; runs from before the JSON recorded it give the commit they alternated with instead, and "
             "the discussion below names theirs.", "",
             "| CPU | commit | rounds | load | --help | " + " | ".join(f"fit {s}" for s in stages) + " |",
             "|---|---|---:|---|---:|" + "---:|" * len(stages)]
    for result in results:
        median = {r["case"]: r["median_s"] for r in result["rows"]}
        fits = [f"{median[f'lit-llm fit {s} tiny, to the end of step 1, new MLflow store']:.1f} / "
                f"{median[f'lit-llm fit {s} tiny, to the end of step 1, existing MLflow store']:.1f} s"
                for s in stages]
        commit = f"`{result['commit']}`" if "commit" in result else f"– (baseline `{result['baseline']}`)"
        lines.append(f"| {cpu_of(result)} | {commit} | {len(result['rows'][0]['seconds'])} | "
                     f"{result['load_avg_start'][0]:.2f}–{result['load_avg_end'][0]:.2f} | "
                     f"{median['lit-llm --help']:.2f} s | {' | '.join(fits)} |")
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in results]
    return lines + [""]


def ab_row(r: dict) -> str:
    """One A/B row of benchmarks/levers.py: what, where, threads, rounds, both medians, their ratio and range."""
    return (f"| {r['lever']} | {r['workload']} | {r['threads']} | {len(r['rounds'])} | "
            f"{r['a_median_s'] * 1e3:.1f} ms | {r['b_median_s'] * 1e3:.1f} ms | {r['ratio_median']:.2f}x | "
            f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f} |")


def levers_section(result: dict) -> list[str]:
    lines = ["## Levers measured and not used (A/B in one process)", "", f"    {result['command']}", "",
             f"A is the code as it is, B the lever; each round runs both on the same inputs, alternating which goes "
             f"first; the ratio is A's time ÷ B's (above 1: the lever pays). torch {result['torch']}; "
             f"{load_line(result)}.", "",
             "| lever | workload | threads | rounds | A median | B median | A ÷ B (median) | range |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += [ab_row(r) for r in result["rows"]]
    lines += ["", "Times are per training step, or per generated token position of the batch (decode).", ""]
    return lines + architecture_section(result) if "architecture" in result else lines


def architecture_section(result: dict) -> list[str]:
    """The same A/B with a Llama part swapped for nanoGPT's: what each part costs (not levers: another model)."""
    lines = ["### What the Llama block's parts cost at nanoGPT's size (not levers: each row is another model)", "",
             "Same command and loop as the levers; A is our model, B the same model with one part swapped for its "
             "GPT-2 counterpart at the same parameter count and matmul FLOPs (above 1: the swap is faster).", "",
             "| swapped | workload | threads | rounds | A median | B median | A ÷ B (median) | range |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += [ab_row(r) for r in result["architecture"]]
    return lines + [""] + (ceiling_section(result) if "ceiling" in result else [])


def ceiling_section(result: dict) -> list[str]:
    """Our model against nanoGPT's in the same loop: how far any lever can take the equal-size comparison."""
    lines = ["### Against nanoGPT's model at the same size: the matmuls alone, eager, compiled", "",
             "Same command and loop; A is nanoGPT's GPT, B our Transformer (same parameter count and matmul FLOPs), "
             "so A ÷ B is our speed relative to nanoGPT's. The first row times only the linear layers' products "
             "(each layer's forward and both backward matmuls at the step's 768 tokens; no other kernel).", "",
             "| compared | workload | threads | rounds | nanoGPT median | lit_llm median | ours ÷ nanoGPT speed "
             "(median) | range |", "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += [ab_row(r) for r in result["ceiling"]]
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", required=True)
    p.add_argument("--model-only", required=True, help="JSON of a --model-only-rounds run")
    p.add_argument("--loss", required=True)
    p.add_argument("--shapes", nargs="*", default=[],
                   help="JSON files of nanogpt_side_by_side.py --backbone KEY=VALUE runs with speed rounds and loss")
    p.add_argument("--shape-rounds", nargs="*", default=[],
                   help="JSON files of runs of the same shapes without loss runs (speed rounds or the models "
                        "alone): pooled with the --shapes runs, not rows of their table")
    p.add_argument("--plot", default=None, help="with --shapes: write their figure here (a PNG)")
    p.add_argument("--generation", nargs="+", required=True,
                   help="JSON files of benchmarks/generation_vs_transformers.py (one per thread count)")
    p.add_argument("--dpo", nargs="*", default=[],
                   help="JSON files of benchmarks/dpo_vs_trl.py (one per mode and thread count)")
    p.add_argument("--startup", nargs="*", default=[],
                   help="JSON files of benchmarks/startup.py: the first as the table, the others one row each")
    p.add_argument("--levers", default=None, help="JSON of benchmarks/levers.py")
    p.add_argument("--notes", default=None, help="a markdown file appended as the report's discussion")
    p.add_argument("--out", default="reports/side_by_side.md")
    args = p.parse_args()
    speed, loss = load(args.speed), load(args.loss)
    cpu = cpu_of(speed)
    lines = ["# Side by side with peers, on the same machine", "",
             "Written by `benchmarks/render_side_by_side.py` from the benchmarks' JSON output; the commands are "
             f"below each table. Machine: {cpu}, {os.cpu_count()} cores (virtual machine), CPU only; a table "
             "measured on another machine says so.", ""]
    model_only = load(args.model_only)
    lines += speed_section(speed) + model_only_section(model_only) + elsewhere([model_only], cpu)
    lines += loss_section(loss, speed) + elsewhere([loss], cpu)
    if args.shapes:
        shapes, extra = [load(path) for path in args.shapes], [load(path) for path in args.shape_rounds]
        if args.plot:
            plot_shapes(shapes, extra, speed, loss, args.plot)
        plot = args.plot and os.path.relpath(args.plot, Path(args.out).parent)
        lines += shapes_section(shapes, extra, speed, loss, plot)  # a CPU column
    generation = [load(path) for path in args.generation]
    lines += generation_section(generation) + elsewhere(generation, cpu)
    if args.dpo:
        dpo = [load(path) for path in args.dpo]
        lines += dpo_section(dpo)  # a CPU column
    if args.startup:
        startup = [load(path) for path in args.startup]
        lines += startup_section(startup[0], startup[1:]) + elsewhere(startup[:1], cpu)
    if args.levers:
        levers = load(args.levers)
        lines += levers_section(levers) + elsewhere([levers], cpu)
    if args.notes:
        lines += [Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
