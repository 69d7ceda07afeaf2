"""Turn a config into what the engine needs: graph, mixing matrix, tokenised shards.

Everything here runs once on the driver before any host starts, so bad input fails fast with
one clear message and nothing has been computed yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from decaf_ray.config import ConfigError, RunConfig
from decaf_ray.data import (
    Shard,
    label_histogram,
    load_text_dataset,
    partition,
    stratified_subsample,
    tokenize,
    train_test_split,
)
from decaf_ray.node.model import check_model, load_tokenizer
from decaf_ray.virtual import round_mixings
from topologies import build_graph, mixing_matrix, validate_mixing


@dataclass(frozen=True)
class Prepared:
    graph: nx.Graph
    Pi: np.ndarray  # (n, n) mixing matrix, validated
    spectral_gap: float
    shards: dict[int, Shard]
    eval_set: Shard
    num_labels: int
    class_names: tuple[str, ...]
    histogram: np.ndarray  # (n, C) label counts per node

    @property
    def n(self) -> int:
        return self.Pi.shape[0]


def make_graph(cfg: RunConfig) -> tuple[nx.Graph, np.ndarray, float]:
    """Graph and validated mixing matrix of ``cfg.topology``."""
    t = cfg.topology
    graph = build_graph(t.name, t.n, path=t.path, **t.params)
    Pi = mixing_matrix(graph, t.mixing)
    report = validate_mixing(Pi, graph)
    return graph, Pi, float(report.spectral_gap)


def prepare(cfg: RunConfig) -> Prepared:
    """Load, split, partition and tokenise the data; build and check the graph."""
    graph, Pi, gap = make_graph(cfg)
    n = Pi.shape[0]
    round_mixings(cfg, Pi)  # a time-varying graph's matrices are checked here, before Ray
    d = cfg.data
    ds = load_text_dataset(d.source, d.path, d.text_column, d.label_column)
    keep = stratified_subsample(np.arange(len(ds)), ds.labels, d.max_samples, cfg.seed)
    train_idx, test_idx = train_test_split(ds.labels[keep], d.test_fraction, cfg.seed)
    train_idx, test_idx = keep[train_idx], keep[test_idx]
    test_idx = stratified_subsample(test_idx, ds.labels, d.eval_samples, cfg.seed)
    if len(train_idx) < n:
        raise ConfigError(
            f"only {len(train_idx)} training samples for {n} nodes: use fewer nodes "
            f"(topology.n) or more data (data.max_samples={d.max_samples})"
        )
    parts = partition(
        ds.labels[train_idx],
        n,
        d.partition,
        alpha=d.alpha,
        classes_per_node=d.classes_per_node,
        seed=cfg.seed,
    )
    check_model(cfg.model, ds.num_classes)
    tok = load_tokenizer(cfg.model)
    all_train = tokenize(tok, [ds.texts[i] for i in train_idx], d.max_length, ds.labels[train_idx])
    shards = {i: all_train.take(p) for i, p in enumerate(parts)}
    eval_set = tokenize(tok, [ds.texts[i] for i in test_idx], d.max_length, ds.labels[test_idx])
    hist = label_histogram(ds.labels[train_idx], parts, ds.num_classes)
    return Prepared(graph, Pi, gap, shards, eval_set, ds.num_classes, ds.class_names, hist)
