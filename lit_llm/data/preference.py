"""Preference data for reward models and DPO: judged responses → chat template → one batch of unique sequences
plus the comparisons between them.

Formats (`format`; "auto" picks one from the columns):
    pairs: `prompt`, `chosen`, `rejected`. The prompt is a string (a user message) or an OpenAI-style message
        list; chosen/rejected are strings (an assistant message) or message lists. A chosen/rejected list that
        repeats the prompt's messages is stripped of them.
    implicit: `chosen`, `rejected` only: two whole conversations sharing a prefix, either as text in the
        "\\n\\nHuman: … \\n\\nAssistant: …" format (Anthropic HH) or as message lists. The prompt is the shared
        prefix up to its last assistant turn: for text, the split is at the last "\\n\\nAssistant:" inside the
        longest common prefix; Human/Assistant turns become user/assistant messages (contents stripped).
    ranked: `prompt`, `responses` (K >= 2, best first). Expanded to all K-choose-2 (better, worse) pairs, each of
        weight 1/C(K,2), so every prompt weighs 1 in the loss whatever its K (InstructGPT, Ouyang et al. 2022).
    scored: `prompt`, `response`, `score` (a float; regression target).
    ultrafeedback: `prompt`, `chosen`, `rejected` message lists (each repeating the prompt) and `score_chosen`,
        `score_rejected` (UltraFeedback binarized, as TRL's DPO reads it): a pair; a tie of the scores is no
        preference and is dropped with the identical pairs.
An optional `margin` column (pairs/implicit) gives a per-pair margin m for the loss −log σ(r_c − r_r − m).
`fields` maps these canonical names (and the per-turn keys `role`, `content`, and `system`) to the data's names.

Batch (one item of the dataset = one prompt with all its responses; `batch_size` counts prompts). Each response is
one sequence, rendered once however many pairs it is in (a ranked list of K gives K sequences, not 2·C(K,2)):
    input_ids       (N, T) long   prompt + response, ending at the response's last token (its end-of-turn, as
                                  a generated response ends), right-padded with pad_id
    attention_mask  (N, T) long   1 on real tokens
    labels          (N, T) long   shifted response-only targets: labels[:, t] = input_ids[:, t+1] when that
                                  token belongs to the response, else IGNORE_INDEX (the last position too), so
                                  `token_logprobs(model(input_ids), labels).sum(-1)` is the response log-prob
    sequence_prompt_index (N,) long   the prompt (0..num_prompts-1 within the batch) of each sequence
    chosen_index    (P,) long     row of the preferred sequence of each pair
    rejected_index  (P,) long     row of the other sequence
    margin          (P,) float    per-pair margin (0 when the data has none)
    weight          (P,) float    1 for a pair, 1/C(K,2) for a ranked list's pairs: weights sum to 1 per prompt
    prompt_index    (P,) long     the prompt of each pair
    num_prompts     ()   long     number of prompts in the batch; pair losses are sum(weight·loss)/num_prompts
    score           (N,) float    only for scored data
Response tokens are the template's assistant mask (content + closing end-of-turn) minus the prompt's rendering,
so earlier assistant turns of a multi-turn prompt are not targets.

Length policy (`max_length` tokens per sequence). "truncate" removes tokens from the start of the prompt (after
bos), keeping the whole response and the token before it; a sequence whose response alone does not fit is dropped.
"drop" drops over-long sequences. A prompt losing any of its sequences is dropped whole (a comparison needs both
sides). Nothing is lost silently: `stats` counts truncated sequences and dropped prompts, and the module warns.

Bad records (a missing field, an empty prompt, a malformed message list, a non-numeric score or margin): by
default a `RecordError` (a `ValueError`) naming the file and line of the record (`file.jsonl:3`; the 0-based
record for parquet and hub data), the field and, when it is missing, the fields the record has; with
`skip_invalid` the record is skipped and counted. An empty response string is valid data (it can be judged, e.g.
a model that said nothing) and is kept. A missing column, or a `fields` key that is no canonical name, raises at
once; so does a split left without any comparison, naming the counts that emptied it.

Reading, splitting and the tokenizer: `lit_llm.data.record_module.RecordDataModule`; a new format is one function
and one entry of `FORMATS`. Encoding and batches: `lit_llm.data.preference_batch`.

Default source: the built-in task world (`source: tasks`): `num_pairs` preference pairs (with `label_noise`) and
`num_ranked` ranked lists of `ranked_k` responses from the train split; validation from the held-out val split,
without label noise.

Deliberate simplifications: ranked lists have no ties; truncation may cut a prompt inside a message; label noise
of the task world applies to pairs only; the whole dataset is tokenized in memory in `setup`.
"""

import re
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_llm.data.preference_batch import (Comparison, EncodedComparison, PreferenceCollator, PreferenceStats,
                                           drop_identical_pairs, encode_comparison, ranked_pairs)
from lit_llm.data.record_module import RecordDataModule
from lit_llm.data.records import Items, RecordError, RecordReader
from lit_llm.world import preference_pairs, ranked_lists

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_TEXT_ROLES = {"Human": "user", "Assistant": "assistant"}


# ------------------------------------------------------------------------------------- implicit prompts
def parse_turns(text: str, first_role: str | None = None) -> list[dict]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" → [{user: a}, {assistant: b}] (contents stripped).

    Args:
        text: Turns in the Human/Assistant text format.
        first_role: Role of text before the first marker (a response continuing after a split); None means
            such text is an error.
    """
    parts = _TURN.split(text)
    messages = []
    if parts[0].strip() or (first_role and len(parts) == 1):
        if first_role is None:
            raise RecordError(f"text before the first {HUMAN.strip()!r}/{ASSISTANT.strip()!r} marker: "
                              f"{parts[0][:40]!r}")
        messages.append({"role": first_role, "content": parts[0].strip()})
    for name, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _TEXT_ROLES[name], "content": content.strip()})
    return messages


def split_shared_text(chosen: str, rejected: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Prompt, chosen and rejected messages of two Human/Assistant conversations sharing a prefix.

    The split is at the last "\\n\\nAssistant:" lying wholly inside the longest common prefix, so the responses
    start at the first assistant turn where the two conversations differ. A conversation may also start with
    "Human:" without the leading blank line.
    """
    if chosen.startswith(HUMAN.lstrip()) and rejected.startswith(HUMAN.lstrip()):
        chosen, rejected = "\n\n" + chosen, "\n\n" + rejected
    n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0:
        raise RecordError(f"the shared prefix of chosen and rejected has no {ASSISTANT.strip()!r} turn")
    start = cut + len(ASSISTANT)
    prompt = parse_turns(chosen[:cut])
    return prompt, parse_turns(chosen[start:], "assistant"), parse_turns(rejected[start:], "assistant")


def split_shared_messages(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Prompt, chosen and rejected messages of two message lists sharing a prefix (split before the last
    assistant turn at or before the first difference)."""
    n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    cut = next((j for j in range(min(n, len(chosen) - 1, len(rejected) - 1), -1, -1)
                if chosen[j]["role"] == rejected[j]["role"] == "assistant"), None)
    if cut is None or cut == 0:
        raise RecordError("chosen and rejected share no prompt before an assistant turn where they differ")
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ----------------------------------------------------------------------------------------------- formats
def prompt_messages(reader: RecordReader, record: dict, where: str) -> list[dict]:
    """The `prompt` field: a string (a user message) or a message list."""
    value = reader.value(record, "prompt", where)
    if isinstance(value, str) and not value.strip():
        raise RecordError(f"{where}: field {reader.name('prompt')!r} is empty")
    return reader.messages(value, f"{where}, prompt", default_role="user")


def response_messages(reader: RecordReader, values: list, prompt: list[dict], where: str) -> list[list[dict]]:
    """Each response as messages (a string is an assistant message; "" is a valid response); a whole conversation
    that repeats the prompt is stripped of it."""
    responses = [reader.messages(v, f"{where}, response {i}", default_role="assistant") for i, v in enumerate(values)]
    return [r[len(prompt):] if r[: len(prompt)] == prompt and len(r) > len(prompt) else r for r in responses]


def margin_of(reader: RecordReader, record: dict, where: str) -> float:
    return reader.number(record, "margin", where) if record.get(reader.name("margin")) is not None else 0.0


def pairs_comparison(reader: RecordReader, record: dict, where: str) -> Comparison:
    prompt = prompt_messages(reader, record, where)
    values = [reader.value(record, "chosen", where), reader.value(record, "rejected", where)]
    return Comparison(prompt, response_messages(reader, values, prompt, where), [(0, 1)],
                      [margin_of(reader, record, where)], [1.0])


def implicit_comparison(reader: RecordReader, record: dict, where: str) -> Comparison:
    """Two whole conversations split at the last assistant turn they share (`split_shared_text`/`_messages`)."""
    chosen, rejected = reader.value(record, "chosen", where), reader.value(record, "rejected", where)
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, c, r = split_shared_text(chosen, rejected)
    else:
        prompt, c, r = split_shared_messages(reader.messages(chosen, f"{where}, chosen", default_role="assistant"),
                                             reader.messages(rejected, f"{where}, rejected", default_role="assistant"))
    return Comparison(prompt, [c, r], [(0, 1)], [margin_of(reader, record, where)], [1.0])


def ranked_comparison(reader: RecordReader, record: dict, where: str) -> Comparison:
    prompt, values = prompt_messages(reader, record, where), reader.value(record, "responses", where)
    if not isinstance(values, list) or len(values) < 2:
        raise RecordError(f"{where}: field {reader.name('responses')!r} must list at least 2 responses")
    pairs, weights = ranked_pairs(len(values))
    return Comparison(prompt, response_messages(reader, values, prompt, where), pairs, [0.0] * len(pairs), weights)


def scored_comparison(reader: RecordReader, record: dict, where: str) -> Comparison:
    prompt = prompt_messages(reader, record, where)
    responses = response_messages(reader, [reader.value(record, "response", where)], prompt, where)
    return Comparison(prompt, responses, scores=[reader.number(record, "score", where)])


def ultrafeedback_comparison(reader: RecordReader, record: dict, where: str) -> Comparison:
    """A pair whose scores must differ (equal scores state no preference: the pair is dropped as identical)."""
    comparison = pairs_comparison(reader, record, where)
    if reader.number(record, "score_chosen", where) == reader.number(record, "score_rejected", where):
        comparison.responses[1] = comparison.responses[0]
    return comparison


FORMATS = {"pairs": pairs_comparison, "implicit": implicit_comparison, "ranked": ranked_comparison,
           "scored": scored_comparison, "ultrafeedback": ultrafeedback_comparison}
COLUMNS = {"ranked": ("prompt", "responses"), "scored": ("prompt", "response", "score"),
           "ultrafeedback": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
           "pairs": ("prompt", "chosen", "rejected"), "implicit": ("chosen", "rejected")}  # in the order auto tries
FIELD_NAMES = ("prompt", "chosen", "rejected", "responses", "response", "score", "margin", "score_chosen",
               "score_rejected", "role", "content", "system")  # what `fields` may rename


def comparison(reader: RecordReader, record: dict, where: str) -> Comparison:
    """A record's comparison in its format, with the system message in front of its prompt."""
    item = FORMATS[reader.fmt](reader, record, where)
    if not item.prompt:
        raise RecordError(f"{where}: empty prompt")
    item.prompt = reader.with_system(record, item.prompt, where)
    return item


# ------------------------------------------------------------------------------------------- data module
class PreferenceDataModule(RecordDataModule):
    """Preference data for the reward and DPO stages: records → comparisons → encoded sequences (tokenized in
    `setup`) → batches of prompts with their responses and pairs.

    Args:
        format: "auto" (from the columns) or one of "pairs", "implicit", "ranked", "scored", "ultrafeedback".
        num_pairs: Task world: training preference pairs (train split).
        num_ranked: Task world: training ranked lists (train split).
        num_val_pairs: Task world: validation pairs (val split, no label noise).
        num_val_ranked: Task world: validation ranked lists (val split).
        ranked_k: Task world: responses per ranked list (>= 2).
        label_noise: Task world: probability that a training pair's chosen and rejected are swapped.
        max_digits: Task world: difficulty of the arithmetic.
        max_length: Tokens per sequence at most.
        truncation: "truncate" (cut the prompt's start) or "drop" over-long sequences; both counted.
        **options: The source options of `RecordDataModule` (source, fields, val_source, val_fraction, hub_name,
            hub_split, system_prompt, chat_template, tokenizer_from, skip_invalid, batch_size (prompts per batch on
            each device: a ranked list brings all its K responses), seed, num_workers).
    """

    FORMATS, COLUMNS, FIELD_NAMES = FORMATS, COLUMNS, FIELD_NAMES
    OPTIONS = ("num_pairs", "num_ranked", "num_val_pairs", "num_val_ranked", "ranked_k", "label_noise", "max_digits",
               "max_length", "truncation")
    what, what_data = "comparison", "preference"

    def __init__(
        self,
        format: Literal["auto", "pairs", "implicit", "ranked", "scored", "ultrafeedback"] = "auto",
        num_pairs: int = 4000,
        num_ranked: int = 1000,
        num_val_pairs: int = 200,
        num_val_ranked: int = 50,
        ranked_k: int = 4,
        label_noise: float = 0.0,
        max_digits: int = 2,
        max_length: int = 256,
        truncation: Literal["truncate", "drop"] = "truncate",
        **options: Any,
    ) -> None:
        super().__init__(format=format, **options)
        if truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
        self.num_pairs, self.num_ranked, self.ranked_k = num_pairs, num_ranked, ranked_k
        self.num_val_pairs, self.num_val_ranked = num_val_pairs, num_val_ranked
        self.label_noise, self.max_digits = label_noise, max_digits
        self.max_length, self.truncation = max_length, truncation

    def task_world_records(self, split: str) -> list[tuple[dict, RecordReader]]:
        """Task-world pairs and ranked lists of one split (records in the "pairs" / "ranked" formats)."""
        train = split == "train"
        n_pairs, n_ranked = (self.num_pairs, self.num_ranked) if train else (self.num_val_pairs, self.num_val_ranked)
        noise = self.label_noise if train else 0.0
        pairs = preference_pairs(n_pairs, split, self.seed, noise, max_digits=self.max_digits) if n_pairs else []
        ranked = ranked_lists(n_ranked, split, self.seed, self.ranked_k, max_digits=self.max_digits) if n_ranked else []
        readers = {fmt: RecordReader(fmt, {}, f"tasks/{split}", self.system_prompt) for fmt in ("pairs", "ranked")}
        return [(r, readers["pairs"]) for r in pairs] + [(r, readers["ranked"]) for r in ranked]

    def build_split(self, split: str, rows: list[tuple[int, dict, RecordReader]]) -> Dataset:
        stats = self.stats[split] = PreferenceStats()

        def encoded(reader: RecordReader, record: dict, where: str) -> EncodedComparison | None:
            kept = drop_identical_pairs(comparison(reader, record, where), stats)
            return kept and encode_comparison(self.tokenizer, kept, self.max_length, self.truncation, stats)

        items = self.read_all(rows, stats, encoded)
        if not items:
            raise self.nothing_left(split, stats, {
                "dropped_too_long": f"a sequence does not fit max_length={self.max_length}",
                "dropped_identical": "pairs whose chosen and rejected are the same"})
        self.warn_losses(split, stats, {
            "skipped_invalid": "{n} records skipped as invalid",
            "dropped_identical": "{n} pairs dropped: chosen and rejected are the same",
            "truncated": f"{{n}} of {stats.sequences} sequences (prompt + response) cut at the prompt's start to "
                         f"max_length={self.max_length} tokens",
            "dropped_too_long": f"{{n}} prompts dropped: a response does not fit max_length={self.max_length}"})
        return Items(items)

    def collate_fn(self) -> PreferenceCollator:
        return PreferenceCollator(self.tokenizer.pad_id)

    collator = collate_fn  # the name the reward and DPO stages use

    def sample_dataloader(self, num_prompts: int, rank: int = 0, world_size: int = 1,
                          split: str = "train") -> DataLoader:
        """A fixed, seeded sample of `num_prompts` prompts of a split, this rank's strided share of it (used to
        compute the reward's mean and std over the training distribution)."""
        data = self.datasets[split]
        order = np.random.default_rng(self.seed).permutation(len(data))[:num_prompts]
        subset = torch.utils.data.Subset(data, order[rank::world_size].tolist())
        return DataLoader(subset, batch_size=self.batch_size, collate_fn=self.collate_fn())
