"""Reported values: `expected.json` (each value with a tolerance) written from the runs, and the check of a fresh
run against it (`lit-llm report --check`)."""

import json
from pathlib import Path

from lit_llm.report.runs import DATA_METRICS, RESULT_METRICS, ReportError, Runs, load_runs
from lit_llm.tracking import Tag


def default_tolerance(key: str, value: float) -> float:
    """How far a re-run may land from a reported value (a judgment, kept once written to expected.json).

    Same seed, same CPU setup: identical. Elsewhere (other BLAS, GPU kernels) the tiny models' greedy answers
    flip: accuracies ±0.05 (±26 of 512 questions), prepared-data counts exact, sample counts ±10%, the rest ±5%.
    """
    if "accuracy" in key or "share" in key:
        return 0.05
    if key.startswith("output."):
        return 0.0
    if key.startswith("rejection/num_"):
        return round(0.1 * abs(value), 1)
    return round(max(0.05 * abs(value), 0.01), 4)


def expected_values(runs: Runs, old: dict | None) -> dict:
    """The reported values of every stage (results and data metrics) with tolerances, old tolerances kept."""
    old_stages = (old or {}).get("stages", {})
    stages = {}
    for s in runs.stages:
        values = {}
        for key in RESULT_METRICS + DATA_METRICS:
            value = s.metric(key)
            if value is None:
                continue
            tol = old_stages.get(s.name, {}).get(key, {}).get("tolerance")
            values[key] = {"value": round(value, 4),
                           "tolerance": tol if tol is not None else default_tolerance(key, value)}
        if values:
            stages[s.name] = values
    return {"experiment": runs.experiment, "recipe": runs.recipe,
            "reported_from": {"pipeline_run": runs.pipeline.info.run_id if runs.pipeline else None,
                              "runs": {s.name: s.run_id for s in runs.stages},
                              "git_sha": runs.tag(Tag.GIT_SHA), "cpu": runs.tag(f"{Tag.HARDWARE}cpu")},
            "note": "value ± tolerance per stage and metric; check with `lit-llm report --check <this file>`",
            "stages": stages}


def compare(expected: dict, runs: Runs) -> tuple[bool, list[list[str]]]:
    """Rows (stage, metric, expected ± tol, fresh, diff, verdict) and whether all reproduce."""
    by_name = {s.name: s for s in runs.stages}
    rows, ok = [], True
    for stage, metrics in expected.get("stages", {}).items():
        for key, spec in metrics.items():
            want, tol = float(spec["value"]), float(spec.get("tolerance", 0.0))
            fresh = by_name[stage].metric(key) if stage in by_name else None
            if fresh is None:
                ok = False
                why = "no such stage run" if stage not in by_name else "metric not logged"
                rows.append([stage, key, f"{want:g} ± {tol:g}", "missing", "", f"FAIL ({why})"])
                continue
            diff = fresh - want
            good = abs(diff) <= tol + 1e-9
            ok &= good
            rows.append([stage, key, f"{want:g} ± {tol:g}", f"{fresh:.4g}", f"{diff:+.4g}", "ok" if good else "FAIL"])
    return ok, rows


def check(expected_path: str | Path, experiment: str | None = None, pipeline_run: str | None = None,
          tracking_uri: str | None = None) -> tuple[bool, str]:
    """Compare a fresh run with the reported values; returns (all reproduce, a readable table)."""
    path = Path(expected_path)
    if not path.is_file():
        raise ReportError(f"expected values not found: {path}")
    expected = json.loads(path.read_text())
    name = experiment or expected.get("experiment")
    if not name:
        raise ReportError(f"{path} names no experiment; pass --experiment")
    runs = load_runs(name, pipeline_run, tracking_uri)
    ok, rows = compare(expected, runs)
    source = f"pipeline run {runs.pipeline.info.run_id[:8]}" if runs.pipeline else "runs made outside a pipeline"
    header = ["stage", "metric", "expected", "fresh", "diff", ""]
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(6)]
    lines = [f"check {path} against experiment '{name}' ({source}):"]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    failed = sum(r[-1] != "ok" for r in rows)
    lines.append(f"all {len(rows)} values reproduce" if ok else f"{failed} of {len(rows)} values do NOT reproduce")
    if expected.get("reproduced") is False:
        lines.append(f"(expected ranges, not yet reproduced here: {expected.get('note', '')})")
    reported = (expected.get("reported_from") or {}).get("runs") or {}
    if reported and all(reported.get(s.name) == s.run_id for s in runs.stages if s.name in reported):
        lines.append("(these are the reported runs themselves: run the recipe for a fresh run to compare)")
    return ok, "\n".join(lines)
