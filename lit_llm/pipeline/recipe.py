"""Pipeline recipes: parsing a `configs/pipeline/<recipe>.yaml`, expanding its `rounds`, and resolving each stage
into the `lit-llm` command line it runs, with stage names turned into paths (see the package docstring)."""

import difflib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("prepare", "fit", "rejection-sample", "rounds")
COMMON_KEYS = {"name", "kind", "dir", "tags"}
KEYS = {
    "prepare": COMMON_KEYS | {"config", "overrides"},
    "fit": COMMON_KEYS | {"config", "overrides", "init_from", "ref_from", "reward_from", "data"},
    "rejection-sample": COMMON_KEYS | {"policy", "reward", "args"},
    "rounds": COMMON_KEYS | {"rounds", "policy", "reward", "rejection", "sft", "dpo"},
}
RECIPE_KEYS = {"name", "description", "experiment_name", "root", "overrides", "stages", "report_dir", "expected"}
# fit-stage keys that name a checkpoint or data, and the stage-module option each sets
WIRING = {"init_from": "--model.init_args.init_from", "ref_from": "--model.init_args.ref_from",
          "reward_from": "--model.init_args.reward_from", "data": "--data.init_args.source"}
REFERENCE = re.compile(r"\{([A-Za-z0-9_.-]+)\}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
STATE_DIR = ".pipeline"


class PipelineError(Exception):
    """A recipe that cannot run, or a stage that failed; the message names the file, stage and key."""


# ------------------------------------------------------------------------------------------------- the recipe
@dataclass
class Stage:
    """One `lit-llm` run of the pipeline.

    Args:
        name: Unique name: the stage's MLflow run name and how later stages refer to it.
        kind: "prepare", "fit" or "rejection-sample" (the `lit-llm` command).
        argv: The `lit-llm` command line, without the pipeline's MLflow nesting tags.
        dir: Output folder (fit: `trainer.default_root_dir`; prepare: `out_dir`; rejection-sample: `--out`).
        inputs: Earlier stages whose outputs it reads.
        configs: Its config files (their bytes are part of the stage's key).
        tags: Extra MLflow tags of its run.
    """

    name: str
    kind: str
    argv: list[str]
    dir: Path
    inputs: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        """What later stages get for `{name}`: the checkpoint of a fit stage, the folder of a data stage."""
        return self.dir / "checkpoints" / "last.ckpt" if self.kind == "fit" else self.dir

    @property
    def command(self) -> str:
        return shlex.join(["lit-llm", *self.argv])


@dataclass
class Recipe:
    """A parsed pipeline recipe: where it writes, what it logs to, and its stages in order."""

    name: str
    source: str
    text: str
    experiment_name: str
    root: Path
    stages: list[Stage]
    report_dir: Path
    expected: str | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR


def _check_keys(entry: dict, allowed: set[str], where: str) -> None:
    for key in entry:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
            raise PipelineError(f"{where}: unknown key '{key}'{hint}")


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise PipelineError(f"{where}: expected a string or a list of strings, got {value!r:.80}")


def expand_rounds(entry: dict, where: str) -> list[dict]:
    """A `rounds` entry as plain stages: per round r, `<name>-r<r>-samples` (rejection-sample from the policy,
    prompt seed = `rejection.seed` + r, so each round sees new prompts), `<name>-r<r>-sft` (SFT on the kept
    samples, from the policy) and `<name>-r<r>-dpo` (DPO on the round's pairs, from and against that SFT model);
    round r+1 starts from round r's DPO model. Folders: `<dir>/round<r>/{samples,sft,dpo}`."""
    _check_keys(entry, KEYS["rounds"], where)
    for key in ("policy", "reward", "sft", "dpo"):
        if key not in entry:
            raise PipelineError(f"{where}: a rounds stage needs '{key}'")
    name, base = entry["name"], entry.get("dir", "{root}/" + entry["name"])
    policy, stages = entry["policy"], []
    for r in range(1, int(entry.get("rounds", 1)) + 1):
        rejection = dict(entry.get("rejection") or {})
        rejection["seed"] = int(rejection.get("seed", 0)) + r
        samples, sft, dpo = (f"{name}-r{r}-{part}" for part in ("samples", "sft", "dpo"))
        tags = {"lit_llm.round": str(r), **(entry.get("tags") or {})}
        stages.append({"name": samples, "kind": "rejection-sample", "dir": f"{base}/round{r}/samples",
                       "policy": policy, "reward": entry["reward"], "args": rejection, "tags": tags})
        for stage, init, data, part in ((sft, policy, "sft.jsonl", "sft"), (dpo, sft, "pairs.jsonl", "dpo")):
            spec = entry[part]
            if not isinstance(spec, dict) or "config" not in spec:
                raise PipelineError(f"{where}: '{part}' must be a mapping with 'config' (and optional 'overrides')")
            _check_keys(spec, {"config", "overrides"}, f"{where}, {part}")
            stages.append({"name": stage, "kind": "fit", "dir": f"{base}/round{r}/{part}", "config": spec["config"],
                           "overrides": spec.get("overrides", []), "init_from": init,
                           "data": "{" + samples + "}/" + data, "tags": tags})
        policy = dpo
    return stages


class Resolver:
    """Turns `{root}` and `{<stage>}` in recipe values into paths, remembering which stages a value reads."""

    def __init__(self, root: Path) -> None:
        self.values: dict[str, str] = {"root": str(root)}
        self.stages: dict[str, Stage] = {}

    def add(self, stage: Stage) -> None:
        self.stages[stage.name] = stage
        self.values[stage.name] = str(stage.output)

    def text(self, value: Any, where: str, inputs: list[str]) -> str:
        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.values:
                known = ", ".join(self.values)
                raise PipelineError(f"{where}: '{{{name}}}' is not 'root' or an earlier stage (known: {known})")
            if name in self.stages and name not in inputs:
                inputs.append(name)
            return self.values[name]

        return REFERENCE.sub(substitute, str(value))

    def checkpoint(self, value: Any, where: str, inputs: list[str]) -> str:
        """A stage name (→ its checkpoint; it must be a fit stage), "gold", or a path with references."""
        if isinstance(value, str) and value in self.stages:
            if self.stages[value].kind != "fit":
                raise PipelineError(f"{where}: '{value}' is a {self.stages[value].kind} stage, not a checkpoint; "
                                    f"use '{{{value}}}/<file>' for its files")
            inputs.append(value)
            return self.values[value]
        return self.text(value, where, inputs)


def _configs(entry: dict, where: str) -> list[str]:
    configs = _as_list(entry.get("config"), f"{where}, config")
    if not configs:
        raise PipelineError(f"{where}: a {entry.get('kind', 'fit')} stage needs 'config'")
    return configs


def _fit_argv(entry: dict, name: str, folder: str, experiment: str, global_overrides: list[str],
              resolver: Resolver, where: str, inputs: list[str]) -> list[str]:
    argv = ["fit"]
    for config in _configs(entry, where):
        argv += ["--config", config]
    argv += [f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.experiment_name={experiment}",
             f"--trainer.logger.init_args.run_name={name}"]
    for key, option in WIRING.items():
        if key in entry:
            resolve = resolver.text if key == "data" else resolver.checkpoint
            argv.append(f"{option}={resolve(entry[key], f'{where}, {key}', inputs)}")
    for override in global_overrides + _as_list(entry.get("overrides"), f"{where}, overrides"):
        argv.append(resolver.text(override, f"{where}, overrides", inputs))
    return argv


def _prepare_argv(entry: dict, name: str, folder: str, experiment: str, resolver: Resolver, where: str,
                  inputs: list[str]) -> list[str]:
    argv = ["prepare"]
    for config in _configs(entry, where):
        argv += ["--config", config]
    # overwrite: the pipeline owns this folder and runs the stage only when its marker is missing or stale
    argv += [f"--out_dir={folder}", "--overwrite=true", "--progress=false",
             f"--tracking.experiment_name={experiment}", f"--tracking.run_name={name}"]
    return argv + [resolver.text(o, f"{where}, overrides", inputs)
                   for o in _as_list(entry.get("overrides"), f"{where}, overrides")]


def _rejection_argv(entry: dict, name: str, folder: str, experiment: str, resolver: Resolver, where: str,
                    inputs: list[str]) -> list[str]:
    for key in ("policy", "reward"):
        if key not in entry:
            raise PipelineError(f"{where}: a rejection-sample stage needs '{key}'")
    reward = entry["reward"]
    reward = "gold" if reward == "gold" else resolver.checkpoint(reward, f"{where}, reward", inputs)
    argv = ["rejection-sample", f"--policy={resolver.checkpoint(entry['policy'], f'{where}, policy', inputs)}",
            f"--reward={reward}", f"--out={folder}", f"--experiment_name={experiment}", f"--run_name={name}"]
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise PipelineError(f"{where}, args: expected a mapping of `lit-llm rejection-sample` options")
    for key, value in args.items():
        if key in ("policy", "reward", "out", "experiment_name", "run_name"):
            raise PipelineError(f"{where}, args: '{key}' is set by the pipeline; use the stage's own keys")
        if value is not None:
            argv.append(f"--{key}={resolver.text(value, f'{where}, args.{key}', inputs)}")
    return argv


def build_stage(entry: dict, experiment: str, global_overrides: list[str], resolver: Resolver,
                where: str) -> Stage:
    """One recipe entry (not `rounds`) as a `Stage` with its resolved command line."""
    kind = entry.get("kind", "fit")
    _check_keys(entry, KEYS[kind], where)
    name, inputs = entry["name"], []
    folder = resolver.text(entry.get("dir", "{root}/" + name), f"{where}, dir", inputs)
    if kind == "fit":
        argv = _fit_argv(entry, name, folder, experiment, global_overrides, resolver, where, inputs)
    elif kind == "prepare":
        argv = _prepare_argv(entry, name, folder, experiment, resolver, where, inputs)
    else:
        argv = _rejection_argv(entry, name, folder, experiment, resolver, where, inputs)
    tags = {str(k): str(v) for k, v in (entry.get("tags") or {}).items()}
    configs = _as_list(entry.get("config"), where) if kind in ("fit", "prepare") else []
    return Stage(name, kind, argv, Path(folder), inputs, configs, tags)


def _entries(raw: dict, source: str) -> list[tuple[dict, str]]:
    """The recipe's stage entries with `rounds` expanded, each with a description of where it came from."""
    if not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise PipelineError(f"{source}: 'stages' must be a non-empty list")
    out = []
    for i, entry in enumerate(raw["stages"]):
        where = f"{source}: stages[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not NAME.fullmatch(entry["name"]):
            raise PipelineError(f"{where}: every stage needs a 'name' (letters, digits, '_', '.', '-')")
        where = f"{source}: stage '{entry['name']}'"
        kind = entry.get("kind", "fit")
        if kind not in KINDS:
            raise PipelineError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "rounds":
            out += [(sub, f"{where} (round stage '{sub['name']}')") for sub in expand_rounds(entry, where)]
        else:
            out.append((entry, where))
    return out


def recipe_from_dict(raw: dict, source: str, text: str | None = None, root: str | None = None,
                     experiment_name: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Parse a recipe mapping; `root`, `experiment_name` and `overrides` (added to every fit stage) override it."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: a recipe is a mapping with 'stages'")
    _check_keys(raw, RECIPE_KEYS, source)
    name = str(raw.get("name") or Path(source).stem)
    experiment = experiment_name or raw.get("experiment_name") or f"pipeline-{name}"
    root_path = Path(root or raw.get("root") or f"runs/pipeline-{name}")
    resolver = Resolver(root_path)
    global_overrides = _as_list(raw.get("overrides"), f"{source}: overrides") + list(overrides or [])
    stages = []
    for entry, where in _entries(raw, source):
        if entry["name"] in resolver.values:
            raise PipelineError(f"{where}: the name '{entry['name']}' is used twice (or is 'root')")
        stage = build_stage(entry, experiment, global_overrides, resolver, where)
        resolver.add(stage)
        stages.append(stage)
    report_dir = Path(resolver.text(raw.get("report_dir", "{root}/report"), f"{source}: report_dir", []))
    return Recipe(name, source, text if text is not None else yaml.safe_dump(raw, sort_keys=False), experiment,
                  root_path, stages, report_dir, raw.get("expected"))


def load_recipe(path: str | Path, **kwargs: Any) -> Recipe:
    """Read and parse a recipe file (see `recipe_from_dict` for the keyword overrides)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"recipe not found: {path}")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML: {err}") from err
    return recipe_from_dict(raw, str(path), text, **kwargs)
