"""`lit-llm` imports Lightning's torchmetrics without the optional packages lit_llm never uses through it, its
command's module with rare garbage collections (then freezes what the imports left), and MLflow's run creation
without IPython."""

import gc
import json
import subprocess
import sys
from importlib import import_module
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


def test_a_fit_through_the_command_imports_none_of_them_and_freezes_its_imports(tmp_path: Path,
                                                                                   token_cache: Path) -> None:
    args = micro_pretrain_args(tmp_path / "run", token_cache, steps=2)
    code = (f"import gc\nthresholds = gc.get_threshold()\n"
            f"from lit_llm.commands import main; main({['fit', *args]!r})\n"
            "assert gc.get_threshold() == thresholds and gc.isenabled(), gc.get_threshold()\n"
            "assert gc.get_freeze_count() > 100_000  # the objects its imports left\n"
            f"{REPORT.format(extras=[*EXTRAS, 'IPython'])}")
    assert json.loads(fresh_process(code, tmp_path).splitlines()[-1]) == []


def test_rare_collections_while_importing_then_the_survivors_frozen() -> None:
    code = ("import gc, sys\nfrom lit_llm.lean_imports import rare_collections\n"
            "before = gc.get_threshold()\nwith rare_collections(50_000):\n"
            "    inside = gc.get_threshold()\n    import torch\n"
            "    cycle = []; cycle.append(cycle); del cycle  # garbage made inside is still collected\n"
            "    assert gc.collect() > 0\n"
            "assert inside == (50_000, *before[1:]) and gc.get_threshold() == before\n"
            "assert gc.get_freeze_count() > 100_000  # torch's objects\n"
            "cycle = []; cycle.append(cycle); del cycle\nassert gc.collect() > 0  # new garbage: collected as usual\n"
            "print('ok')")
    assert fresh_process(code).strip() == "ok"


def test_rare_collections_leaves_a_process_that_imported_torch_alone() -> None:
    import_module("torch")  # imported, as in the processes that call `lit-llm`'s main in-process (tests, notebooks)
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    with lean_imports.rare_collections():
        assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == frozen


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
