"""The shapes section of reports/side_by_side.md: the training goal in its own terms (tokens/s at equal or lower val
loss at equal steps), our backbone in other shapes (`nanogpt_side_by_side.py --backbone KEY=VALUE`).

One row per benchmark run with loss runs; the rounds of every run of a shape on one CPU, speed-only runs included,
pooled in a second table, because on a noisy VM one run's median moves more than the goal's margin; the plot shows
one point per shape at its pooled medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

EQUAL_SIZE = {"n_layer": 4, "d_model": 128, "n_head": 4, "d_ff": 341}  # the benchmark's shape without overrides


def cpu_of(result: dict) -> str:
    """The CPU a benchmark's JSON was measured on (its `cpu`, written by the benchmark)."""
    return result.get("cpu", "an unrecorded CPU")


def final_losses(result: dict) -> tuple[float, float]:
    """nanoGPT's and our val loss at the last step of one benchmark JSON's loss runs."""
    nano, ours = result["loss"]["nanogpt"]["val_loss"], result["loss"]["ours"]["val_loss"]
    return nano[max(nano, key=int)], ours[max(ours, key=int)]


def shape_label(result: dict, short: bool = False) -> str:
    """Our backbone's shape in a benchmark JSON: the benchmark's 4 layers × 128 (4 heads, d_ff 341) with its
    `--backbone` overrides; short: layers × width and the CPU's maker."""
    shape = dict(EQUAL_SIZE)
    shape.update({key: int(value) for key, value in (kv.split("=", 1) for kv in result.get("backbone", []))})
    text = f"{shape['n_layer']} × {shape['d_model']}"
    return f"{text}, {cpu_of(result).split()[0].removesuffix('(R)')}" if short else \
        f"{text}, {shape['n_head']} heads, d_ff {shape['d_ff']}"


def quartile_text(ratios: list[float]) -> str:
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return f"**{statistics.median(ratios):.2f}×** ({q[0]:.2f}–{q[2]:.2f})"


def shape_rows(results: list[dict], speed: dict, loss: dict) -> list[tuple[dict, dict]]:
    """(its speed JSON, its loss JSON): the equal-size tables first, then each other shape's run."""
    return [(speed, loss)] + [(r, r) for r in results]


POOLED = ("runs", "ratio", "compiled_ratio", "model_only_ratio", "model_only_compiled_ratio")


def pooled(results: list[dict]) -> dict[tuple[str, str], dict[str, list]]:
    """Per (shape, CPU), in the order first seen: every run's speed rounds and its models-alone rounds (eager and
    compiled ratios of each), pooled; `runs` lists the runs' commands."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for result in results:
        group = groups.setdefault((shape_label(result), cpu_of(result)), {key: [] for key in POOLED})
        group["runs"].append(result["command"])
        for key in ("ratio", "compiled_ratio"):
            group[key] += [r[key] for r in result.get("speed", []) if key in r]
            group[f"model_only_{key}"] += [r[key] for r in result.get("model_only", []) if key in r]
    return groups


def shapes_section(results: list[dict], extra: list[dict], speed: dict, loss: dict, plot: str | None) -> list[str]:
    """The shapes table (one row per run with loss runs), then the pooled table over `results` and `extra`
    (speed-only or models-alone runs of the same shapes)."""
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
        eager, compiled = ([r[key] for r in sp["speed"]] for key in ("ratio", "compiled_ratio"))
        lines.append(f"| {shape_label(sp)} | {lo['loss']['ours']['params']:,} | {nano:.4f} → {ours:.4f} | "
                     f"{quartile_text(eager)} | {quartile_text(compiled)} | "
                     f"{cpu_of(sp)} | {sp['load_avg_start'][0]:.2f}–{sp['load_avg_end'][0]:.2f} |")
    compiled = list(dict.fromkeys(shape_label(r, short=True) for r in results if r["compile"]))  # each once
    if compiled:  # --compile also compiles the blocks of the loss run
        lines += ["", f"The loss runs of {'; '.join(compiled)} compiled the blocks (the command's `--compile`); the "
                      "first row's loss run is eager."]
    lines += ["", "Commands (one per row after the first):", ""] + [f"    python {r['command']}" for r in results]
    lines += pooled_section(results + extra)
    if plot:
        lines += ["", f"![val loss by step, and the last val loss against the pooled speed ratio]({plot})"]
    return lines + [""]


def pooled_section(results: list[dict]) -> list[str]:
    """The rounds of every run of a shape measured more than once on one CPU, pooled."""
    groups = {key: g for key, g in pooled(results).items() if len(g["runs"]) > 1}
    if not groups:
        return []
    lines = ["", "### Every run of a shape, pooled", "",
             "The rounds of all runs of one shape on one CPU together (the rows above, and runs without loss runs: "
             "speed rounds only, `--loss-steps 0`, or the models alone, `--rounds 0 --model-only-rounds N`): median "
             "and quartiles of the per-round ratios. The models alone run in one plain loop in one process, "
             "alternating (the least noisy measure); with `--compile` the loop also times our model with its blocks "
             "compiled, against nanoGPT's eager model.", "",
             "| lit_llm shape | CPU | runs | eager / nanoGPT | rounds | compiled / nanoGPT | rounds | models alone | "
             "rounds | models alone, ours compiled | rounds |", "|---|---|---:|" + "---:|---:|" * 4]
    for (shape, cpu), g in groups.items():
        cells = [f"{quartile_text(g[key])} | {len(g[key])}" if g[key] else "– | 0" for key in POOLED[1:]]
        lines.append(f"| {shape} | {cpu} | {len(g['runs'])} | {' | '.join(cells)} |")
    extra = [r for r in results if "loss" not in r]
    return lines + ["", "Commands of the runs without loss runs:", ""] + [f"    python {r['command']}" for r in extra]


def plot_shapes(results: list[dict], extra: list[dict], speed: dict, loss: dict, path: str) -> None:
    """Left: val loss by step, nanoGPT and each of our shapes. Right: each shape's last val loss against its
    pooled median speed ratio (eager filled, compiled hollow), with the goal's corner (≥ 1.2×, ≤ nanoGPT's loss)
    shaded. One curve and one point per shape and CPU."""
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
    groups = pooled([speed] + results + extra)
    first_run = _first_by_label([lo for _, lo in shape_rows(results, speed, loss)], lambda r: shape_label(r, True))
    x_max = 0.0
    for i, (label, lo) in enumerate(first_run.items()):
        color = f"C{i}"  # matplotlib's colour cycle: one per shape, however many
        curve = {int(k) + 1: v for k, v in lo["loss"]["ours"]["val_loss"].items()}
        left.plot(sorted(curve), [curve[k] for k in sorted(curve)], color=color, label=f"lit_llm {label}")
        group = groups[(shape_label(lo), cpu_of(lo))]
        for key, fill in (("ratio", color), ("compiled_ratio", "none")):
            x = statistics.median(group[key])
            x_max = max(x_max, x)
            right.plot([x], [final_losses(lo)[1]], "o", color=color, mfc=fill,
                       label=label if key == "ratio" else None)
    left.set(xlabel="step", ylabel="val loss", title="Validation loss at equal steps")
    right.set(xlabel="tokens/s ÷ nanoGPT's (pooled median; hollow: compiled)", ylabel="val loss at the last step",
              title="Speed and quality (shaded: the goal)")
    right.set_xlim(0.5, x_max + 0.3)
    left.legend()
    right.legend(fontsize=8, loc="lower right")  # upper right holds the 1-layer point
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _first_by_label(results: list[dict], label: Callable[[dict], str]) -> dict[str, dict]:
    """The first result of each label, in order (a shape run twice has the same loss curve: one seed)."""
    first: dict[str, dict] = {}
    for result in results:
        first.setdefault(label(result), result)
    return first
