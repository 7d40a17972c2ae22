"""Preference batches: a comparison's responses rendered and cut to length (`encode_comparison`), identical pairs
dropped (`drop_identical_pairs`), and the collator that puts every response of a batch of prompts in one tensor with
index tensors for its pairs (keys and shapes: `lit_llm.data.preference`'s docstring)."""

from dataclasses import asdict, dataclass, field

import torch

from lit_llm.data.sft import right_pad
from lit_llm.data.sources import RecordError
from lit_llm.losses import IGNORE_INDEX
from lit_llm.tokenizer import Tokenizer


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



@dataclass
class EncodedSequence:
    """One rendered prompt + response: `labels[t]` is the response token after `input_ids[t]` or ignored."""

    input_ids: list[int]
    labels: list[int]
    response_start: int  # index of the first response token

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_response(tokenizer: Tokenizer, prompt: list[dict], response: list[dict],
                    prompt_ids: list[int] | None = None) -> EncodedSequence:
    """Render prompt + response with the chat template, ending at the response's last token.

    Response tokens are the assistant mask's tokens past the rendering of the prompt alone (so assistant turns
    inside the prompt are not targets).

    Args:
        tokenizer: Tokenizer whose `render_chat` defines the template.
        prompt: Messages before the response.
        response: The response's messages.
        prompt_ids: The prompt's own rendering, when the caller has it (a comparison's responses share it).
    """
    ids, assistant = tokenizer.render_chat(prompt + response)
    if prompt_ids is None:
        prompt_ids = tokenizer.render_chat(prompt)[0]
    # The prompt's own rendering can end differently from its start inside prompt + response (a template may close
    # the last turn), so response tokens start where the two renderings first differ, not at len(prompt_ids).
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
    keep = 1 if bos_id is not None and seq.input_ids[0] == bos_id else 0  # the model never saw a text without bos
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
    prompt_ids = tokenizer.render_chat(comparison.prompt)[0]
    for response in comparison.responses:
        seq = encode_response(tokenizer, comparison.prompt, response, prompt_ids)
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
