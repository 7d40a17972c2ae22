"""`lit-llm` imports Lightning's torchmetrics without the optional packages lit_llm never uses through it, and MLflow's
run creation without IPython."""

import json
import subprocess
import sys
from pathlib import Path

from lit_llm import lean_imports
from tests.conftest import micro_pretrain_args

EXTRAS = ["transformers", "matplotlib", "scipy.signal"]
REPORT = "import json, sys; print(json.dumps([m for m in {extras} if m in sys.modules]))"


def fresh_process(code: str, cwd: Path | None = None) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_torchmetrics_imports_without_them_and_everything_else_still_can() -> None:
    code = ("from lit_llm.lean_imports import hide_from_torchmetrics; hide_from_torchmetrics()\n"
            "import lightning.pytorch, torchmetrics\n"
            "metric = torchmetrics.MeanMetric(); metric.update(2.0); metric.update(4.0)\n"
            "assert float(metric.compute()) == 3.0\n"
            f"{REPORT.format(extras=EXTRAS)}\n"
            "from lightning_utilities.core.imports import RequirementCache, package_available\n"
            "assert package_available('scipy') and RequirementCache('transformers>=4.4')  # the checks are back\n"
            "import scipy.signal, transformers; transformers.AutoConfig  # and the packages import as usual")
    assert json.loads(fresh_process(code).splitlines()[0]) == []


def test_a_fit_through_the_command_imports_none_of_them(tmp_path: Path, token_cache: Path) -> None:
    args = micro_pretrain_args(tmp_path / "run", token_cache, steps=2)
    code = f"from lit_llm.commands import main; main({['fit', *args]!r})\n{REPORT.format(extras=[*EXTRAS, 'IPython'])}"
    assert json.loads(fresh_process(code, tmp_path).splitlines()[-1]) == []


def test_nothing_changes_once_torchmetrics_is_imported() -> None:
    import torchmetrics

    assert torchmetrics.__name__ in sys.modules  # as in this test process
    finders = list(sys.meta_path)
    lean_imports.hide_from_torchmetrics()
    assert sys.meta_path == finders


def test_mlflow_run_tags_are_the_same_without_importing_ipython() -> None:
    code = ("import sys\nfrom mlflow.tracking.context.registry import resolve_tags\n"
            "from lit_llm.lean_imports import no_ipython_shell\n"
            "with no_ipython_shell():\n    refused = resolve_tags({'a': '1'})\n"
            "assert 'IPython' not in sys.modules\n"
            "assert resolve_tags({'a': '1'}) == refused and 'IPython' in sys.modules  # probed with IPython\n"
            "import IPython\nwith no_ipython_shell():\n    import IPython.display  # already imported: untouched\n"
            "print('ok')")
    assert fresh_process(code).strip() == "ok"
