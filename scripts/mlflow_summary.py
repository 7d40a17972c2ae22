"""Every run of one MLflow experiment as JSON on stdout: name, stage, status, wall time and the last value of each
metric (the store is MLFLOW_TRACKING_URI's). scripts/gpu_checks.sh writes it as runs.json, so a lent machine's runs
come back as one small file instead of their store and checkpoints.

    MLFLOW_TRACKING_URI=sqlite:///out/gpu_checks/work/mlflow.db python scripts/mlflow_summary.py gpu-checks
"""

import json
import sys

from mlflow import MlflowClient

from lit_llm.tracking import Tag


def summary(experiment_name: str) -> list[dict]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [{"run_id": run.info.run_id, "name": run.info.run_name, "stage": run.data.tags.get(Tag.STAGE),
             "status": run.info.status,
             "wall_s": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
             "metrics": run.data.metrics} for run in runs]


if __name__ == "__main__":
    json.dump(summary(sys.argv[1]), sys.stdout, indent=1)
    print()
