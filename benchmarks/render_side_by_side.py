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


def cpu_of(result: dict) -> str:
    """The CPU a benchmark's JSON was measured on (its `cpu`, written by the benchmark)."""
    return result.get("cpu", "an unrecorded CPU")


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


def final_losses(result: dict) -> tuple[float, float]:
    """nanoGPT's and our val loss at the last step of one benchmark JSON's loss runs."""
    nano, ours = result["loss"]["nanogpt"]["val_loss"], result["loss"]["ours"]["val_loss"]
    return nano[max(nano, key=int)], ours[max(ours, key=int)]


def shapes_section(results: list[dict], speed: dict, loss: dict, plot: str | None) -> list[str]:
    """The issue's training goal in its own terms: tokens/s at equal or lower val loss at equal steps, with our
    shape allowed to differ; one benchmark JSON (speed rounds + loss runs) per shape."""
    lines = ["## Other shapes: tokens/s at equal or lower val loss at equal steps", "",
             "The same benchmark with our backbone given another shape (`--backbone KEY=VALUE`): fewer layers at the "
             "same width, or fewer and wider layers with the equal-size model's parameter count and matmul FLOPs per "
             "token (d_ff set so); data, batches, steps and schedule unchanged. Each row is one run of it: its own "
             "speed rounds against nanoGPT (A/B interleaved, median and quartiles of the rounds) and its own pair of "
             "2000-step loss runs. The first row is the equal-size model of the tables above.", "",
             "| lit_llm shape | parameters | val loss at the last step, nanoGPT → lit_llm | lit_llm / nanoGPT "
             "tokens/s | compiled / nanoGPT | CPU | load |", "|---|---:|---|---:|---:|---|---|"]
    for sp, lo in shape_rows(results, speed, loss):
        nano, ours = final_losses(lo)
        lines.append(f"| {shape_label(sp)} | {lo['loss']['ours']['params']:,} | {nano:.4f} → {ours:.4f} | "
                     f"{quartile_text(sp['speed'], 'ratio')} | {quartile_text(sp['speed'], 'compiled_ratio')} | "
                     f"{cpu_of(sp)} | {sp['load_avg_start'][0]:.2f}–{sp['load_avg_end'][0]:.2f} |")
    compiled = [shape_label(r, short=True) for r in results if r["compile"]]
    if compiled:  # --compile also compiles the blocks of the loss run
        lines += ["", f"The loss runs of {'; '.join(compiled)} compiled the blocks (the command's `--compile`); the "
                      "first row's loss run is eager."]
    lines += ["", "Commands (one per row after the first):", ""] + [f"    python {r['command']}" for r in results]
    if plot:
        lines += ["", f"![val loss by step, and the last val loss against the speed ratio]({plot})"]
    return lines + [""]


def plot_shapes(results: list[dict], speed: dict, loss: dict, path: str) -> None:
    """Left: val loss by step, nanoGPT and each of our shapes. Right: each shape's last val loss against its
    median speed ratio (eager filled, compiled hollow), with the goal's corner (≥ 1.2×, ≤ nanoGPT's loss) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    nano_curve = {int(k): v for k, v in loss["loss"]["nanogpt"]["val_loss"].items() if int(k) > 0}
    left.plot(sorted(nano_curve), [nano_curve[k] for k in sorted(nano_curve)], "k--", label="nanoGPT (4 × 128)")
    nano_final = final_losses(loss)[0]
    right.axvspan(1.2, 10, ymax=1, color="tab:green", alpha=0.08)
    right.axhline(nano_final, color="k", ls="--", lw=0.8)
    right.plot([1.0], [nano_final], "ks", label="nanoGPT")
    for i, (sp, lo) in enumerate(shape_rows(results, speed, loss)):
        color = f"C{i}"  # matplotlib's colour cycle: one per shape, however many
        curve = {int(k) + 1: v for k, v in lo["loss"]["ours"]["val_loss"].items()}
        left.plot(sorted(curve), [curve[k] for k in sorted(curve)], color=color,
                  label=f"lit_llm {shape_label(sp, short=True)}")
        final = final_losses(lo)[1]
        for key, fill in (("ratio", color), ("compiled_ratio", "none")):
            right.plot([statistics.median(r[key] for r in sp["speed"])], [final], "o", color=color, mfc=fill,
                       label=shape_label(sp, short=True) if key == "ratio" else None)
    left.set(xlabel="step", ylabel="val loss", title="Validation loss at equal steps")
    right.set(xlabel="tokens/s ÷ nanoGPT's (median; hollow: compiled)", ylabel="val loss at the last step",
              title="Speed and quality (shaded: the goal)")
    right.set_xlim(0.5, max(statistics.median(r["compiled_ratio"] for r in x["speed"]) for x in results) + 0.3)
    left.legend()
    right.legend(fontsize=8, loc="lower right")  # upper right holds the 1-layer point
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shape_rows(results: list[dict], speed: dict, loss: dict) -> list[tuple[dict, dict]]:
    """(its speed JSON, its loss JSON): the equal-size tables first, then each other shape's run."""
    return [(speed, loss)] + [(r, r) for r in results]


def shape_label(result: dict, short: bool = False) -> str:
    """Our backbone's shape in a benchmark JSON: the benchmark's 4 layers × 128 (4 heads, d_ff 341) with its
    `--backbone` overrides; short: layers × width and the CPU's maker."""
    shape = {"n_layer": 4, "d_model": 128, "n_head": 4, "d_ff": 341}
    shape.update({key: int(value) for key, value in (kv.split("=", 1) for kv in result.get("backbone", []))})
    text = f"{shape['n_layer']} × {shape['d_model']}"
    return f"{text}, {cpu_of(result).split()[0].removesuffix('(R)')}" if short else \
        f"{text}, {shape['n_head']} heads, d_ff {shape['d_ff']}"


def quartile_text(rows: list[dict], key: str) -> str:
    ratios = [r[key] for r in rows]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return f"**{statistics.median(ratios):.2f}×** ({q[0]:.2f}–{q[2]:.2f})"


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


def startup_section(result: dict) -> list[str]:
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
    p.add_argument("--plot", default=None, help="with --shapes: write their figure here (a PNG)")
    p.add_argument("--generation", nargs="+", required=True,
                   help="JSON files of benchmarks/generation_vs_transformers.py (one per thread count)")
    p.add_argument("--dpo", nargs="*", default=[],
                   help="JSON files of benchmarks/dpo_vs_trl.py (one per mode and thread count)")
    p.add_argument("--startup", default=None, help="JSON of benchmarks/startup.py")
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
        shapes = [load(path) for path in args.shapes]
        if args.plot:
            plot_shapes(shapes, speed, loss, args.plot)
        plot = args.plot and os.path.relpath(args.plot, Path(args.out).parent)
        lines += shapes_section(shapes, speed, loss, plot)  # a CPU column
    generation = [load(path) for path in args.generation]
    lines += generation_section(generation) + elsewhere(generation, cpu)
    if args.dpo:
        dpo = [load(path) for path in args.dpo]
        lines += dpo_section(dpo)  # a CPU column
    for path, section in [(args.startup, startup_section), (args.levers, levers_section)]:
        if path:
            result = load(path)
            lines += section(result) + elsewhere([result], cpu)
    if args.notes:
        lines += [Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
