"""Tokenised examples as they travel to the hosts: the :class:`Shard` and how to make one.

A shard is plain numpy (zero-copy through the object store); a host turns it into tensors on
its own device. Tokenising happens once on the driver, before any host starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shard:
    """Tokenised examples: input_ids (n, L) int32, attention_mask (n, L) int8, labels (n,)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Shard:
        """The shard of the given row indices."""
        return Shard(self.input_ids[rows], self.attention_mask[rows], self.labels[rows])


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
