"""Lightning imports torchmetrics, and `import torchmetrics` imports every optional package it finds installed:
scipy.signal (audio metrics), transformers' AutoModel (BERTScore, InfoLM, CLIPScore) and matplotlib.pyplot
(`Metric.plot`). lit_llm uses torchmetrics' aggregation metrics only, and the three cost about half of
`import lightning.pytorch`: seconds of every `lit-llm` start (benchmarks/startup.py measures it).

`hide_from_torchmetrics` makes torchmetrics see them as not installed while it imports, through the two checks it
asks (`lightning_utilities`' `package_available` and `RequirementCache`); its metrics that need them then say the
package is missing. Nothing else changes: lit_llm and every other library still import them as usual. The
`lit-llm` command calls it before the command's module imports Lightning; `import lit_llm` does not.

`rare_collections`: importing torch, Lightning and MLflow leaves ~500,000 objects the garbage collector tracks, nearly
all of them alive until the process ends (modules, classes, functions). With Python's default thresholds the
collector runs a young collection every 700 allocations, and after every 100 of those a full one over the grown
heap: in a DPO start, 9 full collections took 1.3 s and found almost no garbage, and one of them fell in the sanity
check (measured with `gc.callbacks`). The `lit-llm` command imports its module with a young collection every
100,000 allocations instead, then freezes what is alive (`gc.freeze`), so later collections skip it.

`no_ipython_shell`: MLflow asks IPython whether it runs in a notebook each time Lightning's logger creates a run,
importing IPython to ask (seconds of CPU, a third of a second on an idle machine). A process that has not imported
IPython runs in no IPython shell, so `tracking` creates its runs with the import refused: the answer is the same.
"""

import gc
import importlib.abc
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType

UNUSED_EXTRAS = frozenset({"scipy", "transformers", "matplotlib"})


@contextmanager
def hidden_packages(names: frozenset[str]) -> Iterator[None]:
    """While inside, `lightning_utilities` reports the packages `names` as not installed."""
    from lightning_utilities.core import imports
    from packaging.requirements import Requirement

    package_available, check_requirement = imports.package_available, imports.RequirementCache._check_requirement

    def available(name: str) -> bool:
        return name not in names and package_available(name)

    def check(cache: imports.RequirementCache) -> None:
        if Requirement(cache.requirement).name not in names:
            return check_requirement(cache)
        cache.available, cache.message = False, f"{cache.requirement!r}: not imported in a lit-llm process"

    imports.package_available, imports.RequirementCache._check_requirement = available, check
    try:
        yield
    finally:
        imports.package_available, imports.RequirementCache._check_requirement = package_available, check_requirement


class _TorchmetricsFinder(importlib.abc.MetaPathFinder):
    """Finds `torchmetrics` as usual, and runs its package import inside `hidden_packages`; then steps aside."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != "torchmetrics":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_hidden(module: ModuleType) -> None:
            with hidden_packages(self.names):
                exec_module(module)

        spec.loader.exec_module = exec_hidden  # type: ignore[method-assign]
        return spec


def hide_from_torchmetrics(names: frozenset[str] = UNUSED_EXTRAS) -> None:
    """Have torchmetrics, when it is imported, see `names` as not installed (nothing if it is already imported)."""
    if "torchmetrics" not in sys.modules and not any(isinstance(f, _TorchmetricsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchmetricsFinder(names))


@contextmanager
def rare_collections(young_threshold: int = 100_000) -> Iterator[None]:
    """While inside, a young collection every `young_threshold` allocations (not 700); on leaving, the thresholds as
    they were, and every object then alive frozen out of later collections. It still collects while inside, so
    little garbage is frozen (~30,000 objects with lit-llm's imports). Nothing at all once torch is imported: the
    heap then holds the caller's objects, which are not ours to freeze (in-process callers, the tests)."""
    if "torch" in sys.modules:
        yield
        return
    thresholds = gc.get_threshold()
    gc.set_threshold(young_threshold, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.freeze()


@contextmanager
def no_ipython_shell() -> Iterator[None]:
    """While inside, `import IPython` raises ImportError, unless it is already imported (a notebook, a shell); the
    callers that probe for a shell catch it and answer "no shell", which is the truth in a process without it."""
    if "IPython" in sys.modules:
        yield
        return
    sys.modules["IPython"] = None  # type: ignore[assignment]  # import's documented "not importable" marker
    try:
        yield
    finally:
        if sys.modules.get("IPython", 0) is None:
            del sys.modules["IPython"]
