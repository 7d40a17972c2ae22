"""Data-preparation benchmark: the whole `lit-llm prepare` on tiny Shakespeare (paragraph documents) + the task world.

Runs `lit_llm.data.prepare.prepare` once per `--num-proc` value on the same config (every step on, MLflow off),
into a temporary folder, and reports documents/s and MB/s of the whole run (input = UTF-8 bytes of the
documents read) and the seconds and documents/s of each step. langid's model is loaded once before the timed
runs (its load time is reported on its own), so every run's language step measures classification only.

Usage:
    python benchmarks/prepare.py --shakespeare /work/shared/data/tinyshakespeare.txt --task-docs 20000 \
        --num-proc 1 2 --report reports/prepare.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import datasets

from lit_llm.data.cleaning import language_identifier
from lit_llm.data.prepare import parse_config, prepare

STEP_ORDER = ("read", "normalize", "quality", "language", "blocklist", "exact_dedup", "near_dedup", "tokenizer",
              "tokenize", "mix", "write")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shakespeare", default="/work/shared/data/tinyshakespeare.txt")
    p.add_argument("--task-docs", type=int, default=20000, help="task-world documents to generate")
    p.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="one timed run per value")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--json", type=Path, default=None, help="write raw results as JSON here")
    return p.parse_args()


def bench_config(args: argparse.Namespace, out_dir: str, num_proc: int) -> dict:
    return {
        "out_dir": out_dir, "seed": 0, "num_proc": num_proc, "progress": False,
        "sources": [{"path": args.shakespeare, "name": "shakespeare", "split_docs": "paragraph", "weight": 0.5,
                     "max_epochs": 4.0},
                    {"path": "tasks", "name": "tasks", "max_docs": args.task_docs, "weight": 0.5}],
        "cleaning": {"quality": {"min_words": 5, "max_top_ngram_ratio": {2: 0.3, 3: 0.4, 4: 0.45},
                                 "max_dup_ngram_ratio": {5: 0.25, 10: 0.15}},
                     "language": {"enabled": True, "languages": ["en"], "min_confidence": 0.5},
                     "blocklist": {"path": str(Path(__file__).parents[1] / "configs/prepare/blocklist.txt"),
                                   "min_matches": 2},
                     "near_dedup": {"threshold": 0.7}},
        "mix": {"val_fraction": 0.05}, "tokenizer": {"kind": "bpe", "vocab_size": args.vocab_size},
        "tracking": {"enabled": False},
    }


def input_size(stats: dict) -> tuple[int, float]:
    """(documents read, MB of UTF-8 text read) — characters ≈ bytes for this ASCII-only input."""
    docs = sum(s["documents"] for s in stats["read"].values())
    chars = sum(s["chars"] for s in stats["read"].values())
    return docs, chars / 1e6


def run_once(args: argparse.Namespace, num_proc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, text = parse_config(bench_config(args, f"{tmp}/out", num_proc))
        start = time.perf_counter()
        result = prepare(cfg, text)
        wall = time.perf_counter() - start
        digest = hashlib.sha256((result.out_dir / "train.bin").read_bytes()).hexdigest()[:16]
    docs, mb = input_size(result.stats)
    return {"num_proc": num_proc, "wall_s": wall, "documents": docs, "mb": mb, "stats": result.stats,
            "train_sha256": digest}


def step_rows(run: dict) -> list[str]:
    steps, timing = run["stats"]["steps"], run["stats"]["timing"]
    rows = []
    for step in STEP_ORDER:
        if step not in timing:
            continue
        seconds = timing[step]
        docs_in = steps[step]["sources"]["total"]["documents_in"] if step in steps else None
        rate = f"{docs_in / seconds:,.0f}" if docs_in and seconds > 0 else ""
        removed = steps[step]["sources"]["total"]["removed"] if step in steps else ""
        rows.append(f"| {step} | {seconds:.2f} | {docs_in if docs_in is not None else ''} | {rate} | {removed} |")
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(args: argparse.Namespace, runs: list[dict], load_s: float, loadavg: tuple[float, float]) -> str:
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    first = runs[0]["stats"]
    lines = [
        "# Data preparation benchmark (`lit-llm prepare`)", "",
        "## Setup", "",
        f"- Input: tiny Shakespeare ({args.shakespeare}) split into paragraph documents + {args.task_docs:,} "
        f"task-world documents (with its injected duplicates and junk): {runs[0]['documents']:,} documents, "
        f"{runs[0]['mb']:.2f} MB.",
        "- Every step on: NFKC + whitespace, quality (min 5 words, relaxed n-gram limits as in tiny.yaml), "
        "langid (en, ≥0.5), block list (configs/prepare/blocklist.txt, ≥2 matches), exact dedup, MinHash LSH "
        f"(word 5-shingles, 128 permutations, threshold 0.7); BPE tokenizer (vocab {args.vocab_size}) trained on "
        "the mix; 50/50 mix by tokens; MLflow off.",
        f"- Machine: {os.cpu_count()}-core CPU VM ({cpu_name()}), shared with other jobs (1-minute load average "
        f"{loadavg[0]:.1f} at start, {loadavg[1]:.1f} at end); Python {platform.python_version()}, "
        f"datasets {datasets.__version__}.",
        f"- langid model load (once per process, not in the timings below): {load_s:.1f} s.", "",
        "Command:", "", "```bash", cmd, "```", "",
        "## Whole run", "",
        "| num_proc | wall s | documents/s | MB/s |", "|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['num_proc']} | {r['wall_s']:.1f} | {r['documents'] / r['wall_s']:,.0f} | "
                     f"{r['mb'] / r['wall_s']:.3f} |")
    for r in runs:
        lines += ["", f"## Per step (num_proc={r['num_proc']})", "",
                  "| step | seconds | documents in | documents/s | removed |", "|---|---:|---:|---:|---:|",
                  *step_rows(r)]
    out = first["output"]
    same = len({r["train_sha256"] for r in runs}) == 1
    lines += ["", "## Output", "",
              f"- train.bin sha256[:16] per run: {', '.join(r['train_sha256'] for r in runs)} "
              f"({'identical' if same else 'DIFFERENT'} across num_proc).",
              f"- train: {out['train_tokens']:,} tokens in {out['train_documents']:,} documents; val: "
              f"{out['val_tokens']:,} tokens in {out['val_documents']:,} documents ({out['dtype']}).",
              "- shares: " + ", ".join(f"{n} {100 * m['share']:.1f}% ({m['epochs']:.2f} epochs)"
                                       for n, m in first["mix"]["train"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    language_identifier()
    load_s = time.perf_counter() - start
    runs = [run_once(args, n) for n in args.num_proc]
    for r in runs:
        print(f"num_proc={r['num_proc']}: {r['wall_s']:.1f} s, {r['documents'] / r['wall_s']:,.0f} docs/s, "
              f"{r['mb'] / r['wall_s']:.3f} MB/s")
    loadavg = (load_start, os.getloadavg()[0])
    if args.json:
        args.json.write_text(json.dumps({"langid_load_s": load_s, "loadavg": loadavg, "runs": runs}, indent=2))
    if args.report:
        args.report.write_text(markdown(args, runs, load_s, loadavg))


if __name__ == "__main__":
    main()
