"""Groups of texts that stand in for labels when a split should be non-IID by something else.

Prompt/response data (ShareGPT, a chat file) have no labels, yet a decentralized study wants
nodes whose data differ. :func:`text_groups` gives each text one of ``k`` groups, and the
label-based partitions (``dirichlet``, ``classes``, ``shots``) then split by group:

- ``length``: quantiles of the text's length in characters (short chats on some nodes, long
  ones on others);
- ``cluster``: k-means (scikit-learn) over TF-IDF vectors of the words, seeded: a topic
  split without any labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decaf_ray.data.sources import DataError

GROUPINGS = ("length", "cluster")


def text_groups(texts: Sequence[str], by: str, k: int, seed: int) -> np.ndarray:
    """(n,) int64 group of each text, in 0..k-1."""
    if k < 2 or k > len(texts):
        raise DataError(f"data.groups={k} must lie in 2..{len(texts)} (the number of texts)")
    if by == "length":
        lengths = np.array([len(t) for t in texts], dtype=np.float64)
        edges = np.quantile(lengths, np.linspace(0, 1, k + 1)[1:-1])
        return np.searchsorted(edges, lengths, side="right").astype(np.int64)
    if by == "cluster":
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectors = TfidfVectorizer(max_features=2**14, stop_words="english").fit_transform(texts)
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
        return km.labels_.astype(np.int64)
    raise DataError(f"data.split_by={by!r}: choose label or one of {GROUPINGS}")
