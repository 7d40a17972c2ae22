"""Rejection sampling (best-of-n), the data step of a Llama-3-style round: sample n responses per prompt from a
policy, score them, keep the best for SFT and best-vs-worst as a new preference pair.

Prompts are task-world prompts (`world.ppo_prompts`, default the train split), rendered with the chat template as
in SFT and the gold evaluation. Responses are sampled with the KV cache (`rollout.sample`, as PPO samples) and end
at the end-of-turn token, as in the reward model's training data. Scores come from `rollout.reward_source`: a
reward-stage checkpoint (normalised as (r − mean)/std) or, with `reward="gold"`, the task world's verifier (1/0).

Outputs in `out`:
    sft.jsonl    Alpaca records {instruction, input, output, reward, task, key, answer}: the best response per
                 prompt (read by `lit_llm.data.sft.SFTDataModule`, format "alpaca"); prompts whose best
                 response is blank are skipped (the SFT data refuses empty outputs) and counted
    pairs.jsonl  {prompt, chosen, rejected, chosen_reward, rejected_reward, task, key, answer}: best vs worst
                 (read by `lit_llm.data.preference.PreferenceDataModule`, format "pairs"); prompts whose best and
                 worst scores are equal are skipped (no preference to learn)
    stats.json   acceptance statistics, also logged as an MLflow run (tag lit_llm.stage=rejection_sampling,
                 lit_llm.parent_run_id = the policy's run)

With `min_reward`, the best response is kept for SFT only when its score reaches it (with the gold reward and
min_reward 1: correct answers only, as in rejection-sampling fine-tuning); by default it is always kept.

With `edited_pairs`, also `edited_pairs.jsonl`: for every distinct wrong sample (by the task's gold answer), the
pair {chosen: the same answer sentence with the gold answer, rejected: the sample}, like Llama 3's edited
responses. The two differ only in the answer, so a reward model trained on them cannot learn the policy's
phrasing instead of correctness, and its negatives are the policy's own mistakes (reports/ppo.md).

Deliberate simplifications: ties are broken by sampling order; the policy and reward model must share a tokenizer.
"""

import argparse
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lit_llm.checkpoint import load_backbone
from lit_llm.generation import left_pad
from lit_llm.rollout import RewardSource, RolloutConfig, reward_source, sample
from lit_llm.tokenizer import Tokenizer
from lit_llm.world import ANSWER_FORMATS, is_correct, ppo_prompts, write_jsonl
from lit_llm.tracking import log_batched, open_run, run_tags

STAGE = "rejection_sampling"
RUN_ID_KEY = "mlflow_run_id"  # in stats.json, as in a checkpoint's and a prepared folder's metadata
OUTPUTS = ("stats.json", "sft.jsonl", "pairs.jsonl")  # what a finished call leaves in --out


def outputs(folder: Path) -> list[Path]:
    """The files a finished `lit-llm rejection-sample --out folder` wrote (stats.json last)."""
    return [Path(folder) / name for name in OUTPUTS]


def run_id(folder: Path) -> str | None:
    """The MLflow run of a finished call, from its stats.json."""
    return json.loads((Path(folder) / "stats.json").read_text()).get(RUN_ID_KEY)


@dataclass
class RejectionStats:
    """What rejection sampling kept (written to stats.json and logged as MLflow metrics)."""

    prompts: int
    samples_per_prompt: int
    mean_reward: float          # over all samples
    mean_best_reward: float     # per prompt, averaged
    mean_worst_reward: float
    usable_pair_share: float    # share of prompts whose best score exceeds the worst
    num_pairs: int
    num_sft: int
    blank_best: int             # prompts whose best response was blank (no SFT record)
    below_min_reward: int       # prompts whose best score was below `min_reward` (no SFT record)
    sample_gold_accuracy: float  # over all samples
    kept_gold_accuracy: float    # of the kept (best) responses
    num_edited_pairs: int = 0    # lines of edited_pairs.jsonl (with `edited`)


@torch.no_grad()
def sample_and_score(model: torch.nn.Module, tokenizer: Tokenizer, records: list[dict], n: int, source: RewardSource,
                     max_new_tokens: int, temperature: float, batch_size: int, seed: int,
                     system_prompt: str | None = None) -> tuple[list[list[str]], torch.Tensor]:
    """n sampled responses per record and their (normalised) scores: (texts [prompt][n], scores (prompts, n))."""
    rows = [rec for rec in records for _ in range(n)]  # each prompt n times, adjacent
    generator = torch.Generator().manual_seed(seed)
    config, stop = RolloutConfig(max_new_tokens, temperature), tokenizer.chat_stop_ids()
    repeats = n if batch_size % n == 0 else 1  # whole groups per batch: each prompt's pass runs once for its n rows
    texts, scores = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask = left_pad([tokenizer.render_prompt(r["prompt"], system_prompt) for r in chunk[::repeats]],
                             tokenizer.pad_id)
        samples = sample(model, tokenizer, ids, mask, config, stop, generator, repeats=repeats)
        texts += samples.texts
        scores.append(source.normalize(source.score(chunk, samples.texts, samples.generation)).float().cpu())
    grouped = [texts[i : i + n] for i in range(0, len(texts), n)]
    return grouped, torch.cat(scores).view(len(records), n)


def select(records: list[dict], texts: list[list[str]], scores: torch.Tensor, n: int,
           min_reward: float | None = None) -> tuple[list[dict], list[dict], RejectionStats]:
    """Best response per prompt for SFT (when its score is at least `min_reward`), best-vs-worst pairs, and
    the statistics."""
    best, worst = scores.argmax(-1).tolist(), scores.argmin(-1).tolist()
    sft, pairs, kept_correct, blank, low = [], [], [], 0, 0
    for rec, options, row, b, w in zip(records, texts, scores.tolist(), best, worst):
        ids = {"task": rec["task"], "key": rec["key"], "answer": rec["answer"]}
        kept_correct.append(is_correct(rec, options[b]))
        if min_reward is not None and row[b] < min_reward:
            low += 1
        elif options[b].strip():
            instruction, _, inp = rec["prompt"].partition("\n")  # alpaca_prompt(instruction, input) == prompt
            sft.append({"instruction": instruction, "input": inp, "output": options[b], "reward": row[b], **ids})
        else:
            blank += 1
        if row[b] > row[w]:
            pairs.append({"prompt": rec["prompt"], "chosen": options[b], "rejected": options[w],
                          "chosen_reward": row[b], "rejected_reward": row[w], **ids})
    correct = [is_correct(rec, t) for rec, options in zip(records, texts) for t in options]
    stats = RejectionStats(
        prompts=len(records), samples_per_prompt=n, mean_reward=scores.mean().item(),
        mean_best_reward=scores.max(-1).values.mean().item(), mean_worst_reward=scores.min(-1).values.mean().item(),
        usable_pair_share=len(pairs) / len(records), num_pairs=len(pairs), num_sft=len(sft), blank_best=blank,
        below_min_reward=low,
        sample_gold_accuracy=sum(correct) / len(correct), kept_gold_accuracy=sum(kept_correct) / len(records))
    return sft, pairs, stats


def edited_answer(response: str, gold: str, rng: random.Random) -> str:
    """The response's answer sentence with the gold answer in it (a random answer format when it has none)."""
    text = response.strip()
    if re.fullmatch(r"The answer is .*\.", text):
        return f"The answer is {gold}."
    if text and "\n" not in text and not text.lower().startswith("the answer"):
        return gold
    return rng.choice(ANSWER_FORMATS).format(gold)


def edited_pairs(records: list[dict], texts: list[list[str]], seed: int) -> list[dict]:
    """Every distinct wrong sample of a prompt against its gold-answer edit (see the module docstring)."""
    rng, pairs = random.Random(seed), []
    for rec, responses in zip(records, texts):
        for response in dict.fromkeys(responses):
            if not is_correct(rec, response):
                pairs.append({"prompt": rec["prompt"], "chosen": edited_answer(response, rec["answer"], rng),
                              "rejected": response, "task": rec["task"], "key": rec["key"], "answer": rec["answer"]})
    return pairs


def log_run(stats: RejectionStats, params: dict, out: Path, files: list[str], parent_run_id: str | None,
            experiment_name: str, run_name: str | None, tracking_uri: str | None) -> str:
    """Log the statistics as an MLflow run (child of the policy's run by tag); returns its id."""
    tags = run_tags(STAGE, seed=params.get("seed"), parent_run_id=parent_run_id)
    with open_run(experiment_name, tags, run_name, tracking_uri) as (client, run_id):
        log_batched(client, run_id, params, {f"rejection/{k}": float(v) for k, v in asdict(stats).items()})
        for name in files:
            client.log_artifact(run_id, str(out / name))
    return run_id


def rejection_sample(policy: str, reward: str, prompts: int, n: int, out: str | Path, temperature: float = 1.0,
                     max_new_tokens: int = 16, batch_size: int = 64, seed: int = 0, split: str = "train",
                     max_digits: int = 2, system_prompt: str | None = None, min_reward: float | None = None,
                     edited: bool = False, experiment_name: str = "lit_llm",
                     run_name: str | None = None, tracking_uri: str | None = None) -> dict:
    """Sample, score, select, write sft.jsonl / pairs.jsonl / stats.json and log the MLflow run.

    Returns:
        The statistics as a dict, with the MLflow run id under "mlflow_run_id".
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 to form pairs, got {n}")
    loaded = load_backbone(policy)
    model = loaded.model.eval()
    source = reward_source(reward, loaded.tokenizer)
    records = ppo_prompts(prompts, split, seed, max_digits=max_digits)
    texts, scores = sample_and_score(model, loaded.tokenizer, records, n, source, max_new_tokens, temperature,
                                     batch_size, seed, system_prompt)
    sft, pairs, stats = select(records, texts, scores, n, min_reward)
    out = Path(out)
    write_jsonl(sft, out / "sft.jsonl")
    write_jsonl(pairs, out / "pairs.jsonl")
    if edited:
        edits = edited_pairs(records, texts, seed)
        write_jsonl(edits, out / "edited_pairs.jsonl")
        stats.num_edited_pairs = len(edits)
    result = asdict(stats)
    (out / "stats.json").write_text(json.dumps(result, indent=2))
    params = {"policy": policy, "reward": reward, "temperature": temperature, "max_new_tokens": max_new_tokens,
              "seed": seed, "split": split, "max_digits": max_digits, "min_reward": min_reward, "edited": edited}
    files = ["stats.json", "sft.jsonl", "pairs.jsonl"] + (["edited_pairs.jsonl"] if edited else [])
    result[RUN_ID_KEY] = log_run(stats, params, out, files, loaded.run_id, experiment_name, run_name, tracking_uri)
    (out / "stats.json").write_text(json.dumps(result, indent=2))
    return result


def _flag(text: str) -> bool:
    """A true/false command-line value (the pipeline writes `--key=value`)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str]) -> None:
    """Best-of-n rejection sampling from a policy on task-world prompts: SFT data and preference pairs."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm rejection-sample", description=main.__doc__)
    parser.add_argument("--policy", required=True, help="policy: a lit_llm .ckpt of any stage or an HF directory")
    parser.add_argument("--reward", required=True, help="a reward-stage .ckpt, or 'gold' for the task's gold answer")
    parser.add_argument("--prompts", type=int, required=True, help="number of task-world prompts")
    parser.add_argument("--n", type=int, default=4, help="responses sampled per prompt (default 4)")
    parser.add_argument("--out", required=True, help="folder for sft.jsonl, pairs.jsonl and stats.json")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="tokens per response at most (default 16)")
    parser.add_argument("--batch_size", type=int, default=64, help="sequences generated per batch (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt draw and of sampling (default 0)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="task-world split")
    parser.add_argument("--max_digits", type=int, default=2, help="task-world difficulty (default 2)")
    parser.add_argument("--system_prompt", default=None, help="system message of every prompt")
    parser.add_argument("--min_reward", type=float, default=None,
                        help="keep a prompt's best response for SFT only when its score is at least this "
                             "(e.g. 1 with --reward gold: correct answers only); default: always keep it")
    parser.add_argument("--edited_pairs", dest="edited", type=_flag, default=False, metavar="true|false",
                        help="also write edited_pairs.jsonl: each wrong sample vs the same sentence with the gold "
                             "answer (default false)")
    parser.add_argument("--experiment_name", default="lit_llm", help="MLflow experiment (default lit_llm)")
    parser.add_argument("--run_name", default=None, help="MLflow run name")
    parser.add_argument("--tracking_uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI or "
                                                             "sqlite:///mlflow.db)")
    args = vars(parser.parse_args(argv))
    stats = rejection_sample(**args)
    print(json.dumps(stats, indent=2))
