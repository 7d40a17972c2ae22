"""`lit-llm pipeline`: the stages of a recipe in order, each a normal `lit-llm` run, wired by paths.

    lit-llm pipeline --config configs/pipeline/tiny.yaml [--dry_run]

A recipe (`configs/pipeline/<recipe>.yaml`) lists stages. Each stage is one `lit-llm` command with its own config
file and overrides — `prepare`, `fit` (any stage module) or `rejection-sample` — or a `rounds` entry that expands
into R Llama-3-style rounds (rejection-sample → SFT → DPO, each round starting from the last round's DPO model).
A stage names earlier stages instead of paths (`init_from: sft`, `data: "{pairs}/pairs.jsonl"`); the pipeline turns
the names into the earlier stage's output (`<dir>/checkpoints/last.ckpt` of a fit stage, the folder of a prepare or
rejection-sample stage), so every stage's command can be printed and re-run by hand (`--dry_run` prints them).

Resume: when a stage ends, the pipeline writes its marker `<root>/.pipeline/<stage>.json` (the stage's key and
run id). The key hashes the stage's command, its config files' bytes and the run ids of the stages it reads. A
stage whose marker has the same key and whose outputs exist is skipped; otherwise it runs, and so does every stage
that reads it. A checkpoint alone proves nothing: Lightning writes last.ckpt during training too. A training stage
stopped half-way (SIGTERM or Ctrl-C, which write last.ckpt first; a crash) left `<stage>.started.json` with its key:
run with the same key, it resumes from its last.ckpt (`--ckpt_path`), exactly where it stopped. SIGTERM during
any other stage stops it as Ctrl-C does; the pipeline exits 143 (130 for Ctrl-C) with its MLflow run KILLED.

MLflow: all stages log to the recipe's experiment. The pipeline is a run of its own (tag lit_llm.stage=pipeline,
kept across resumes in `<root>/.pipeline/pipeline.json`; changed stage commands start a new one); each stage run is
nested under it (MLflow's `mlflow.parentRunId`), beside the weights' lineage (`lit_llm.parent_run_id`) that stages
record themselves and the data's (`lit_llm.data_run_id`). The pipeline run holds the recipe (`recipe.yaml`), the
stage table (`stages.json`: name, kind, command, run id, seconds, load, ran or reused) and the hardware;
`lit-llm report` reads them.

Deliberate simplifications: stages run one after another in this process (no parallel branches); an interrupted
data stage (prepare, rejection-sample) restarts from its beginning; files outside the pipeline (e.g. an
`init_from` path that is not a stage) are not part of a stage's key.
"""

import argparse
import sys

from lit_llm.pipeline.recipe import PipelineError, load_recipe
from lit_llm.pipeline.run import PipelineStopped, run_pipeline, sigterm_stops


def main(argv: list[str]) -> None:
    """Run a pipeline recipe: its stages in order, skipping those already done, under one MLflow pipeline run."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm pipeline", description=main.__doc__)
    parser.add_argument("--config", required=True, help="recipe, e.g. configs/pipeline/tiny.yaml")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and each stage's command; run nothing")
    parser.add_argument("--root", default=None, help="output folder of the stages (default: the recipe's root)")
    parser.add_argument("--experiment_name", default=None, help="MLflow experiment (default: the recipe's)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra argument for every fit stage, e.g. --override=--trainer.max_steps=10 "
                             "(repeatable; part of each stage's key, so changed values re-run the stages)")
    parser.add_argument("--no_report", action="store_true", help="do not write the report at the end")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.config, root=args.root, experiment_name=args.experiment_name,
                             overrides=args.override)
        with sigterm_stops():
            run_pipeline(recipe, dry_run=args.dry_run, report_at_end=not args.no_report)
    except PipelineStopped as err:
        print(f"lit-llm pipeline: {err.message}", file=sys.stderr)
        raise
    except PipelineError as err:
        sys.exit(f"lit-llm pipeline: {err}")
