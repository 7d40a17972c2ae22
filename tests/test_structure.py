"""The package's shape: no import cycle, stages that know nothing of the task world or the data modules, small
files, and a `lit-llm --help` that imports neither torch nor Lightning nor MLflow."""

import ast
import subprocess
import sys
from pathlib import Path

import lit_llm

PACKAGE = Path(lit_llm.__file__).parent
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The lit_llm modules `path` imports when it runs (anywhere but under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if is_type_checking_block(block) for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # a submodule imported by name
    return {name for name in found if name in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    found = modules()
    # A module's import of its own package's __init__ is Python's doing, not a dependency worth a cycle.
    return {name: runtime_imports(path, set(found)) - {name} for name, path in found.items()}


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    assert "lit_llm.rollout" in graph["lit_llm.stages.ppo"]  # the walk sees real imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_stages_know_nothing_of_the_task_world_or_the_data_modules():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("lit_llm.stages"):
            leaks = {m for m in imported if m.startswith(("lit_llm.world", "lit_llm.data"))}
            assert not leaks, f"{name} imports {sorted(leaks)}"


def test_rollout_is_shared_by_ppo_and_rejection_sampling():
    graph = import_graph()
    assert "lit_llm.rollout" in graph["lit_llm.rejection"]
    assert "lit_llm.stages.reward" not in graph["lit_llm.stages.ppo"]  # the reward model is the rollout's business


def test_package_files_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"split these modules (over {MAX_LINES} lines): {too_long}"


def test_help_imports_neither_torch_nor_lightning_nor_mlflow():
    code = ("import sys; from lit_llm.commands import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
