"""Tokenised examples as they travel to the hosts: the :class:`Shard` and how to make one.

A shard is plain numpy (zero-copy through the object store); a host turns it into tensors on
its own device. Tokenising happens once on the driver, before any host starts.

- :func:`tokenize` (task ``classify``): one text per row, padded or cut to ``max_length``.
- :func:`tokenize_prompts` (task ``causal_lm``): prompt + response + end-of-text per row; the
  prompt is wrapped in the tokenizer's chat template when asked and it has one, only its body
  (the article, the user's message) is shortened to fit, and ``loss_mask`` marks the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from decaf_ray.data.sources import DataError

_SLOT = "\x00BODY\x00"  # stands for the prompt's body while the chat template is rendered


@dataclass(frozen=True)
class Shard:
    """Rows of examples: labels (n,) int64 (a class, or -1) and, for text, input_ids (n, L)
    int32 and attention_mask (n, L) int8; for causal LMs also loss_mask (n, L) int8 (1 on
    response tokens) and prompt_len (n,) int32 (where the response starts); for images,
    pixels (n, H, W, C) uint8 instead of tokens."""

    labels: np.ndarray
    input_ids: np.ndarray | None = None
    attention_mask: np.ndarray | None = None
    loss_mask: np.ndarray | None = None
    prompt_len: np.ndarray | None = None
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays this shard holds, by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def take(self, rows: np.ndarray) -> Shard:
        """The shard of the given row indices."""
        return Shard(**{k: v[rows] for k, v in self.arrays().items()})


def tokenize(tokenizer, texts: list[str], max_length: int, labels: np.ndarray) -> Shard:
    """Pad or truncate every text to ``max_length`` tokens."""
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="max_length",
        return_tensors="np",
    )
    return Shard(
        input_ids=enc["input_ids"].astype(np.int32),
        attention_mask=enc["attention_mask"].astype(np.int8),
        labels=np.asarray(labels, dtype=np.int64),
    )


def eos_id(tokenizer) -> int:
    """The end-of-text token (a BERT vocabulary's [SEP] when there is none)."""
    for tid in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tid is not None:
            return int(tid)
    raise DataError("the tokenizer has no end-of-text (eos or sep) token")


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])


def prompt_frame(tokenizer, head: str, tail: str, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids before and after a prompt's body: ``head`` and ``tail`` inside the user turn
    of the chat template (when ``chat`` and the tokenizer has one), else as they are; a BOS
    token first when the tokenizer has one the template does not already write."""
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": head + _SLOT + tail}],
            tokenize=False,
            add_generation_prompt=True,
        )
        prefix, suffix = rendered.split(_SLOT)
    else:
        prefix, suffix = head, tail
    before, after = _ids(tokenizer, [prefix, suffix])
    bos = tokenizer.bos_token
    if bos is not None and tokenizer.bos_token_id is not None and not prefix.startswith(bos):
        before = [int(tokenizer.bos_token_id)] + before
    return before, after


def answer_ids(tokenizer, answers: Sequence[str], chat: bool) -> list[list[int]]:
    """Token ids of each answer, ending with the end-of-text token. After a chat template's
    assistant header the answer starts the turn; after a plain prompt it follows a space."""
    lead = "" if chat and getattr(tokenizer, "chat_template", None) else " "
    end = eos_id(tokenizer)
    return [ids + [end] for ids in _ids(tokenizer, [lead + a.strip() for a in answers])]


def tokenize_prompts(
    tokenizer,
    bodies: Sequence[str],
    answers: Sequence[list[int]],
    frames: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    labels: np.ndarray,
) -> Shard:
    """Rows ``before + body + after + answer`` (answer: token ids ending in end-of-text;
    ``frames``: each row's (before, after)), right-padded to ``max_length``; each body is cut
    so that its row fits, each answer to at most half of ``max_length``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    n = len(bodies)
    ids = np.full((n, max_length), pad, dtype=np.int32)
    attention = np.zeros((n, max_length), dtype=np.int8)
    loss_mask = np.zeros((n, max_length), dtype=np.int8)
    prompt_len = np.zeros(n, dtype=np.int32)
    for i, (body, answer, (before, after)) in enumerate(
        zip(_ids(tokenizer, bodies), answers, frames)
    ):
        answer = answer[: max(2, max_length // 2)]
        budget = max_length - len(before) - len(after) - len(answer)
        if budget < 1:
            raise DataError(
                f"data.max_length={max_length} leaves no room for the text: the prompt's frame "
                f"takes {len(before) + len(after)} tokens and the answer {len(answer)}; raise "
                "data.max_length or shorten task.prompt"
            )
        row = before + body[:budget] + after + answer
        ids[i, : len(row)] = row
        attention[i, : len(row)] = 1
        loss_mask[i, len(row) - len(answer) : len(row)] = 1
        prompt_len[i] = len(row) - len(answer)
    return Shard(
        labels=np.asarray(labels, dtype=np.int64),
        input_ids=ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        prompt_len=prompt_len,
    )
