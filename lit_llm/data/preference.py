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

Default source: the built-in task world (`source: tasks`): `num_pairs` preference pairs (with `label_noise`) and
`num_ranked` ranked lists of `ranked_k` responses from the train split; validation from the held-out val split,
without label noise.

Deliberate simplifications: ranked lists have no ties; truncation may cut a prompt inside a message; label noise
of the task world applies to pairs only; the whole dataset is tokenized in memory in `setup`.
"""

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_llm.data.sources import (
    FieldError,
    RecordError,
    Records,
    check_field_names,
    holdout_split,
    load_records,
    losses_warning,
    model_tokenizer,
    require_fields,
    source_fingerprint,
    split_loss,
)
from lit_llm.data.sampling import TrainOrderState, train_loader
from lit_llm.data.sft import right_pad
from lit_llm.data.tasks import preference_pairs, ranked_lists
from lit_llm.losses import IGNORE_INDEX
from lit_llm.tokenizer import Tokenizer

TASKS_SOURCE = "tasks"
FORMATS = ("pairs", "implicit", "ranked", "scored")
REQUIRED_COLUMNS = {"pairs": ("prompt", "chosen", "rejected"), "implicit": ("chosen", "rejected"),
                    "ranked": ("prompt", "responses"), "scored": ("prompt", "response", "score")}
ROLES = ("system", "user", "assistant")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_TEXT_ROLES = {"Human": "user", "Assistant": "assistant"}
FIELD_NAMES = ("prompt", "chosen", "rejected", "responses", "response", "score", "margin", "role", "content",
               "system")  # what `fields` may rename

@dataclass
class Comparison:
    """One prompt and its judged responses, as chat messages.

    Args:
        prompt: Messages before the responses.
        responses: Per response, the messages continuing the prompt (usually one assistant message).
        pairs: (better, worse) response indices.
        margins: Per pair margin.
        weights: Per pair weight (summing to 1 over the prompt's pairs).
        scores: Per response regression target (scored data), else None.
    """

    prompt: list[dict]
    responses: list[list[dict]]
    pairs: list[tuple[int, int]] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    scores: list[float] | None = None


def ranked_pairs(k: int) -> tuple[list[tuple[int, int]], list[float]]:
    """All C(k, 2) (better, worse) index pairs of a best-first list of k, each weighted 1/C(k, 2)."""
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    return pairs, [1.0 / len(pairs)] * len(pairs)


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


# ----------------------------------------------------------------------------------------- records
class RecordReader:
    """Turns raw records of one source into `Comparison`s.

    Args:
        fmt: One of `FORMATS`.
        fields: Canonical name -> the data's name (only differing names need an entry).
        source: Name of the source, for error messages.
        system_prompt: System message for prompts that have none (and no `system` column value).
        names: Names record i in error messages (`Records.where`: its file and line); default "source, record i".
    """

    def __init__(self, fmt: str, fields: dict[str, str], source: str, system_prompt: str | None = None,
                 names: Callable[[int], str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {fmt!r}")
        self.fmt, self.fields, self.source, self.system_prompt = fmt, fields, source, system_prompt
        self.where = names or (lambda i: f"{source}, record {i}")

    def name(self, canonical: str) -> str:
        return self.fields.get(canonical, canonical)

    def value(self, record: dict, canonical: str, where: str) -> Any:
        """A field's value; missing/None raises (an empty response string is allowed: it can be judged)."""
        value = record.get(self.name(canonical))
        if value is None:
            # `datasets` gives every row every column of the file (None where absent): list only the present ones
            present = sorted(k for k, v in record.items() if v is not None)
            raise FieldError(f"{where}: missing field {self.name(canonical)!r}; available fields: {present}")
        return value

    def messages(self, value: Any, role: str, where: str) -> list[dict]:
        """A string as one message of `role`, or an OpenAI-style message list (validated, keys remapped)."""
        if isinstance(value, str):
            return [{"role": role, "content": value}]
        if not isinstance(value, list) or not value:
            raise RecordError(f"{where}: expected a string or a non-empty list of messages, got {value!r:.60}")
        out = []
        for j, turn in enumerate(value):
            r = turn.get(self.name("role")) if isinstance(turn, dict) else None
            content = turn.get(self.name("content")) if isinstance(turn, dict) else None
            if r not in ROLES or not isinstance(content, str):
                raise RecordError(f"{where}, turn {j}: expected {{{self.name('role')}: one of {ROLES}, "
                                  f"{self.name('content')}: str}}, got {turn!r:.80}")
            out.append({"role": r, "content": content})
        return out

    def prompt_and_responses(self, record: dict, where: str) -> tuple[list[dict], list[list[dict]]]:
        """The prompt and the response messages of a record, whatever its format."""
        if self.fmt == "implicit":
            chosen, rejected = self.value(record, "chosen", where), self.value(record, "rejected", where)
            if isinstance(chosen, str) and isinstance(rejected, str):
                prompt, c, r = split_shared_text(chosen, rejected)
            else:
                prompt, c, r = split_shared_messages(self.messages(chosen, "assistant", f"{where}, chosen"),
                                                     self.messages(rejected, "assistant", f"{where}, rejected"))
            return prompt, [c, r]
        prompt_value = self.value(record, "prompt", where)
        if isinstance(prompt_value, str) and not prompt_value.strip():
            raise RecordError(f"{where}: field {self.name('prompt')!r} is empty")
        prompt = self.messages(prompt_value, "user", f"{where}, prompt")
        names = {"pairs": ["chosen", "rejected"], "scored": ["response"]}.get(self.fmt)
        if names is None:  # ranked
            values = self.value(record, "responses", where)
            if not isinstance(values, list) or len(values) < 2:
                raise RecordError(f"{where}: field {self.name('responses')!r} must list at least 2 responses")
        else:
            values = [self.value(record, n, where) for n in names]
        responses = [self.messages(v, "assistant", f"{where}, response {i}") for i, v in enumerate(values)]
        # An explicit prompt repeated at the start of a whole conversation is not part of the response.
        return prompt, [r[len(prompt):] if r[: len(prompt)] == prompt and len(r) > len(prompt) else r
                        for r in responses]

    def read(self, record: dict, index: int) -> Comparison:
        """The comparison of record `index` (the source's 0-based row, for error messages)."""
        where = self.where(index)
        prompt, responses = self.prompt_and_responses(record, where)
        if not prompt:
            raise RecordError(f"{where}: empty prompt")
        system = record.get(self.name("system")) or self.system_prompt
        if system and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": str(system)}, *prompt]
        comparison = Comparison(prompt, responses)
        if self.fmt == "scored":
            comparison.scores = [self.number(record, "score", where)]
        elif self.fmt == "ranked":
            comparison.pairs, comparison.weights = ranked_pairs(len(responses))
            comparison.margins = [0.0] * len(comparison.pairs)
        else:
            margin = self.number(record, "margin", where) if record.get(self.name("margin")) is not None else 0.0
            comparison.pairs, comparison.weights, comparison.margins = [(0, 1)], [1.0], [margin]
        return comparison

    def number(self, record: dict, canonical: str, where: str) -> float:
        value = self.value(record, canonical, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordError(f"{where}: field {self.name(canonical)!r} must be a finite number, got {value!r}")
        return float(value)


def detect_format(columns: Sequence[str], fields: dict[str, str], source: str) -> str:
    """The preference format a source's columns (after the `fields` mapping) stand for."""
    for fmt in ("ranked", "scored", "pairs", "implicit"):
        if all(fields.get(name, name) in columns for name in REQUIRED_COLUMNS[fmt]):
            return fmt
    raise FieldError(f"{source}: cannot tell the preference format from the fields {list(columns)}; set "
                     f"data.format (one of {FORMATS}) and map differing names with data.fields")


# ------------------------------------------------------------------------------------------ tokenization
@dataclass
class EncodedSequence:
    """One rendered prompt + response: `labels[t]` is the response token after `input_ids[t]` or ignored."""

    input_ids: list[int]
    labels: list[int]
    response_start: int  # index of the first response token

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_response(tokenizer: Tokenizer, prompt: list[dict], response: list[dict]) -> EncodedSequence:
    """Render prompt + response with the chat template, ending at the response's last token.

    Response tokens are the assistant mask's tokens past the rendering of the prompt alone (so assistant turns
    inside the prompt are not targets).

    Args:
        tokenizer: Tokenizer whose `render_chat` defines the template.
        prompt: Messages before the response.
        response: The response's messages.
    """
    ids, assistant = tokenizer.render_chat(prompt + response)
    prompt_ids = tokenizer.render_chat(prompt)[0]
    shared = next((i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b), min(len(ids), len(prompt_ids)))
    is_response = [a and t >= shared for t, a in enumerate(assistant)]
    if not any(is_response):
        raise RecordError("the response renders to no assistant token")
    end = len(is_response) - is_response[::-1].index(True)  # cut the template's trailing separator
    ids, is_response = ids[:end], is_response[:end]
    labels = [ids[t + 1] if is_response[t + 1] else IGNORE_INDEX for t in range(end - 1)] + [IGNORE_INDEX]
    return EncodedSequence(ids, labels, is_response.index(True))


def fit_length(seq: EncodedSequence, max_length: int, policy: str, bos_id: int | None) -> EncodedSequence | None:
    """The sequence cut from the prompt's start to `max_length` tokens ("truncate"), or None when it cannot
    fit (the response and the token before it must stay) or the policy is "drop"."""
    cut = len(seq) - max_length
    if cut <= 0:
        return seq
    keep = 1 if bos_id is not None and seq.input_ids[0] == bos_id else 0
    if policy == "drop" or keep + cut > seq.response_start - 1:
        return None
    # Labels of removed prompt positions are all IGNORE_INDEX, so removing the same positions keeps them aligned.
    return EncodedSequence(seq.input_ids[:keep] + seq.input_ids[keep + cut :],
                           seq.labels[:keep] + seq.labels[keep + cut :], seq.response_start - cut)


@dataclass
class EncodedComparison:
    """A comparison's sequences (one per response) and its pairs/scores."""

    sequences: list[EncodedSequence]
    comparison: Comparison


@dataclass
class PreferenceStats:
    """What happened to the records of one split (counts; logged as run params by the reward stage)."""

    records: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_identical: int = 0
    prompts: int = 0
    sequences: int = 0
    pairs: int = 0
    tokens: int = 0
    first_error: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "first_error"}


def drop_identical_pairs(comparison: Comparison, stats: PreferenceStats) -> Comparison | None:
    """The comparison without its pairs whose two responses are the same (they teach nothing: a reward model gets no
    signal, DPO a log-ratio of 0 whatever it learns), counted in `stats.dropped_identical`; a ranked list's other
    pairs are reweighted to sum to 1 again. None when no pair is left; scored data has no pairs and is kept."""
    if comparison.scores is not None:
        return comparison
    keep = [k for k, (a, b) in enumerate(comparison.pairs) if comparison.responses[a] != comparison.responses[b]]
    stats.dropped_identical += len(comparison.pairs) - len(keep)
    if not keep:
        return None
    if len(keep) < len(comparison.pairs):
        total = sum(comparison.weights[k] for k in keep)
        comparison.pairs = [comparison.pairs[k] for k in keep]
        comparison.margins = [comparison.margins[k] for k in keep]
        comparison.weights = [comparison.weights[k] / total for k in keep]
    return comparison


def encode_comparison(tokenizer: Tokenizer, comparison: Comparison, max_length: int, policy: str,
                      stats: PreferenceStats) -> EncodedComparison | None:
    """Tokenize every response of a comparison under the length policy; None (counted) when one cannot fit."""
    sequences, truncated = [], 0
    for response in comparison.responses:
        seq = encode_response(tokenizer, comparison.prompt, response)
        fitted = fit_length(seq, max_length, policy, tokenizer.bos_id)
        if fitted is None:
            stats.dropped_too_long += 1
            return None
        truncated += fitted is not seq
        sequences.append(fitted)
    stats.truncated += truncated  # of the sequences kept
    stats.prompts += 1
    stats.sequences += len(sequences)
    stats.pairs += len(comparison.pairs)
    stats.tokens += sum(map(len, sequences))
    return EncodedComparison(sequences, comparison)


# ---------------------------------------------------------------------------------------- collator
class PreferenceCollator:
    """Concatenates the sequences of a batch of comparisons (right-padded) and offsets their pair indices;
    see the module docstring for the batch keys and shapes.

    Args:
        pad_id: Token id used for padding inputs.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[EncodedComparison]) -> dict[str, torch.Tensor]:
        seqs = [s for item in items for s in item.sequences]
        batch = right_pad([{"input_ids": seq.input_ids, "labels": seq.labels} for seq in seqs], self.pad_id)
        pairs: dict[str, list] = {k: [] for k in ("chosen_index", "rejected_index", "margin", "weight",
                                                  "prompt_index")}
        seq_prompt, offset = [], 0
        for p, item in enumerate(items):
            c = item.comparison
            for (better, worse), m, w in zip(c.pairs, c.margins, c.weights):
                for key, value in zip(pairs, (offset + better, offset + worse, m, w, p)):
                    pairs[key].append(value)
            seq_prompt += [p] * len(item.sequences)
            offset += len(item.sequences)
        for key, values in pairs.items():
            batch[key] = torch.tensor(values, dtype=torch.float32 if key in ("margin", "weight") else torch.long)
        batch["sequence_prompt_index"] = torch.tensor(seq_prompt, dtype=torch.long)
        batch["num_prompts"] = torch.tensor(len(items), dtype=torch.long)
        if all(item.comparison.scores is not None for item in items):
            batch["score"] = torch.tensor([s for item in items for s in item.comparison.scores])
        return batch


class Comparisons(Dataset):
    """Map-style dataset of encoded comparisons (one prompt each)."""

    def __init__(self, items: list[EncodedComparison]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EncodedComparison:
        return self.items[i]


# --------------------------------------------------------------------------------------- data module
class PreferenceDataModule(TrainOrderState, pl.LightningDataModule):
    """Preference data for the reward and DPO stages, tokenized with the model's tokenizer in `setup`.

    The tokenizer comes from the model being trained (`trainer.lightning_module.tokenizer`, loaded with its
    `init_from` weights); outside a Trainer, set `datamodule.tokenizer` before `setup()`.

    Args:
        source: "tasks" (the built-in task world, no download), a local file or folder (jsonl, json, parquet) or
            a hub dataset name.
        format: "auto" (from the columns) or one of "pairs", "implicit", "ranked", "scored".
        fields: Canonical field name -> the data's field name, e.g. {"chosen": "good", "role": "from"}.
        val_source: Separate validation file/name; otherwise `val_fraction` of `source` is held out.
        val_fraction: Share of records held out for validation when there is no `val_source`.
        hub_name: Config name of a hub dataset.
        hub_split: Split of a hub dataset to read (the validation source reads the same split).
        system_prompt: System message added to prompts that have none.
        chat_template: How conversations are rendered: "auto" (default: the tokenizer's own template, else the
            default one when it has its <|user|> ... <|end|> tokens, else a plain-text one, "### Instruction:" /
            "### Response:" + its eos), "own", "default", "plain", a Jinja template or a file holding one. The model
            keeps it (checkpoints, generation and the gold evaluation render the same way).
        num_pairs: Task world: training preference pairs (train split).
        num_ranked: Task world: training ranked lists (train split).
        num_val_pairs: Task world: validation pairs (val split, no label noise).
        num_val_ranked: Task world: validation ranked lists (val split).
        ranked_k: Task world: responses per ranked list (>= 2).
        label_noise: Task world: probability that a training pair's chosen and rejected are swapped.
        max_digits: Task world: difficulty of the arithmetic.
        max_length: Tokens per sequence at most.
        truncation: "truncate" (cut the prompt's start) or "drop" over-long sequences; both counted.
        skip_invalid: Skip (and count) malformed records instead of raising.
        batch_size: Prompts per batch on each device (a ranked list brings all its K responses).
        seed: Seed for the task world and the train/val split of a file.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        source: str = TASKS_SOURCE,
        format: Literal["auto", "pairs", "implicit", "ranked", "scored"] = "auto",
        fields: dict[str, str] | None = None,
        val_source: str | None = None,
        val_fraction: float = 0.05,
        hub_name: str | None = None,
        hub_split: str = "train",
        system_prompt: str | None = None,
        chat_template: str | None = None,
        num_pairs: int = 4000,
        num_ranked: int = 1000,
        num_val_pairs: int = 200,
        num_val_ranked: int = 50,
        ranked_k: int = 4,
        label_noise: float = 0.0,
        max_digits: int = 2,
        max_length: int = 256,
        truncation: Literal["truncate", "drop"] = "truncate",
        skip_invalid: bool = False,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if truncation not in ("truncate", "drop"):
            raise ValueError(f"truncation must be 'truncate' or 'drop', got {truncation!r}")
        check_field_names(fields or {}, FIELD_NAMES)
        self.source, self.format, self.fields = source, format, dict(fields or {})
        self.val_source, self.val_fraction = val_source, val_fraction
        self.hub_name, self.hub_split, self.system_prompt = hub_name, hub_split, system_prompt
        self.chat_template, self.chat_template_note = chat_template, None
        self.num_pairs, self.num_ranked, self.ranked_k = num_pairs, num_ranked, ranked_k
        self.num_val_pairs, self.num_val_ranked = num_val_pairs, num_val_ranked
        self.label_noise, self.max_digits = label_noise, max_digits
        self.max_length, self.truncation, self.skip_invalid = max_length, truncation, skip_invalid
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.tokenizer: Tokenizer | None = None
        self.fingerprint: str | None = None
        self.stats: dict[str, PreferenceStats] = {}
        self.datasets: dict[str, Comparisons] = {}

    @property
    def is_task_world(self) -> bool:
        return self.source == TASKS_SOURCE

    def _options(self) -> dict[str, Any]:
        """Everything besides the source's bytes that shapes the batches (for the fingerprint)."""
        keys = ("format", "fields", "val_source", "val_fraction", "hub_name", "hub_split", "system_prompt",
                "num_pairs", "num_ranked", "num_val_pairs", "num_val_ranked", "ranked_k", "label_noise",
                "max_digits", "max_length", "truncation", "skip_invalid", "seed")
        options = {k: getattr(self, k) for k in keys}
        if self.chat_template is not None:  # unset: the fingerprints of earlier runs stay valid
            options["chat_template"] = self.chat_template
        return options

    def task_world_records(self, split: str) -> list[dict]:
        """Task-world pairs and ranked lists of one split (records in the "pairs" / "ranked" formats)."""
        train = split == "train"
        n_pairs, n_ranked = (self.num_pairs, self.num_ranked) if train else (self.num_val_pairs, self.num_val_ranked)
        noise = self.label_noise if train else 0.0
        pairs = preference_pairs(n_pairs, split, self.seed, noise, max_digits=self.max_digits) if n_pairs else []
        ranked = ranked_lists(n_ranked, split, self.seed, self.ranked_k, max_digits=self.max_digits) if n_ranked else []
        return pairs + ranked

    def _raw_records(self) -> dict[str, list[tuple[int, dict, RecordReader]]]:
        """Train and validation records, each with its row in the source (for error messages) and the reader of
        its format."""
        if self.is_task_world:
            out = {}
            for split in ("train", "val"):
                pairs = RecordReader("pairs", {}, f"tasks/{split}", self.system_prompt)
                ranked = RecordReader("ranked", {}, f"tasks/{split}", self.system_prompt)
                out[split] = [(i, r, ranked if "responses" in r else pairs)
                              for i, r in enumerate(self.task_world_records(split))]
            return out
        records = load_records(self.source, self.hub_split, self.hub_name)
        reader = self._reader(records)
        rows = [(i, r, reader) for i, r in enumerate(records.rows)]
        if self.val_source is not None:
            val = load_records(self.val_source, self.hub_split, self.hub_name)
            val_reader = self._reader(val)
            return {"train": rows, "val": [(i, r, val_reader) for i, r in enumerate(val.rows)]}
        train, val = holdout_split(rows, self.val_fraction, self.seed, self.source)
        return {"train": train, "val": val}

    def _reader(self, records: Records) -> RecordReader:
        """A reader for a loaded source, after checking that its format's required columns exist."""
        columns, source = records.columns, records.source
        fmt = detect_format(columns, self.fields, source) if self.format == "auto" else self.format
        reader = RecordReader(fmt, self.fields, source, self.system_prompt, records.where)
        require_fields(columns, [reader.name(name) for name in REQUIRED_COLUMNS[fmt]], source)
        return reader

    def build(self, records: list[tuple[int, dict, RecordReader]], tokenizer: Tokenizer,
              stats: PreferenceStats) -> list[EncodedComparison]:
        """(row, record, reader) triples → comparisons → encoded comparisons under the length policy; `stats`
        counts what happened."""
        items = []
        for row, record, reader in records:
            stats.records += 1
            try:
                comparison = drop_identical_pairs(reader.read(record, row), stats)
                item = comparison and encode_comparison(tokenizer, comparison, self.max_length, self.truncation, stats)
            except RecordError as err:
                where = reader.where(row)
                if not str(err).startswith(where):  # errors of the shared-prefix split and of rendering
                    err = RecordError(f"{where}: {err}")
                if not self.skip_invalid:
                    raise err from None
                stats.skipped_invalid += 1
                stats.first_error = stats.first_error or str(err)
                continue
            if item is not None:
                items.append(item)
        return items

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # setup runs once per Trainer call; the tokenized data does not change
            return
        tokenizer = self.tokenizer = model_tokenizer(self)
        self.fingerprint = source_fingerprint(TASKS_SOURCE if self.is_task_world else self.source, self._options())
        for split, records in self._raw_records().items():
            stats = self.stats[split] = PreferenceStats()
            items = self.build(records, tokenizer, stats)
            if not items:
                hints = {"skipped_invalid": f"first: {stats.first_error}",
                         "dropped_too_long": f"a sequence does not fit max_length={self.max_length}",
                         "dropped_identical": "pairs whose chosen and rejected are the same"}
                losses = {k: getattr(stats, k) for k in hints}
                source = self.val_source if split == "val" and self.val_source else self.source
                raise split_loss(source, split, "comparison", stats.records, losses, hints)
            self.datasets[split] = Comparisons(items)
            self._warn_losses(split, stats)

    def _warn_losses(self, split: str, stats: PreferenceStats) -> None:
        warning = losses_warning("preference", split, stats, {
            "skipped_invalid": "{n} records skipped as invalid",
            "dropped_identical": "{n} pairs dropped: chosen and rejected are the same",
            "truncated": f"{{n}} of {stats.sequences} sequences (prompt + response) cut at the prompt's start to "
                         f"max_length={self.max_length} tokens",
            "dropped_too_long": f"{{n}} prompts dropped: a response does not fit max_length={self.max_length}"})
        if warning:
            rank_zero_warn(warning)

    def collator(self) -> PreferenceCollator:
        return PreferenceCollator(self.tokenizer.pad_id)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed, collate_fn=self.collator(),
                            num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.batch_size, collate_fn=self.collator(),
                          num_workers=self.num_workers)

    def sample_dataloader(self, num_prompts: int, rank: int = 0, world_size: int = 1,
                          split: str = "train") -> DataLoader:
        """A fixed, seeded sample of `num_prompts` prompts of a split, this rank's strided share of it (used to
        compute the reward's mean and std over the training distribution)."""
        data = self.datasets[split]
        order = np.random.default_rng(self.seed).permutation(len(data))[:num_prompts]
        subset = torch.utils.data.Subset(data, order[rank::world_size].tolist())
        return DataLoader(subset, batch_size=self.batch_size, collate_fn=self.collator())
