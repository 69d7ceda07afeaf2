"""Turn a config into what the engine needs: graph, mixing matrices, tokenised shards.

Everything here runs once on the driver before any host starts, so bad input fails fast with
one clear message and nothing has been computed yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from decaf_ray.config import ConfigError, RunConfig
from decaf_ray.data import (
    Shard,
    answer_ids,
    label_histogram,
    load_prompt_dataset,
    load_text_dataset,
    partition,
    prompt_frame,
    stratified_subsample,
    tokenize,
    tokenize_prompts,
    train_test_split,
)
from decaf_ray.data.groups import text_groups
from decaf_ray.data.images import load_image_dataset
from decaf_ray.data.overlap import ShardOverlap, draw_shards, shard_overlap
from decaf_ray.data.sources import read_saved_dataset, read_table
from decaf_ray.node.model import check_model, load_tokenizer
from decaf_ray.node.vision import native_size
from decaf_ray.virtual import round_mixings
from topologies import build_graph, mixing_matrix, validate_mixing
from topologies.sparse import Matrix


@dataclass(frozen=True)
class Prepared:
    graph: nx.Graph
    Pi: Matrix  # (n, n) mixing matrix, validated; a scipy.sparse csr_array when n > 2,048
    # and the graph is sparse (topologies.sparse.prefers_sparse), else a numpy array
    spectral_gap: float
    shards: dict[int, Shard]
    eval_set: Shard
    num_labels: int  # 0 for prompt/response data
    class_names: tuple[str, ...]
    histogram: np.ndarray  # (n, C) label counts per node
    task: str = "classify"
    choices: tuple[tuple[int, ...], ...] = ()  # causal_lm on labels: each class's answer ids
    pad_id: int = 0
    local_evals: dict[int, Shard] | None = None  # eval.on local/both: each node's test split
    overlap: ShardOverlap | None = None  # data.samples_per_node: what the shards share

    @property
    def n(self) -> int:
        return self.Pi.shape[0]


def make_graph(cfg: RunConfig) -> tuple[nx.Graph, Matrix, float]:
    """Graph, validated mixing matrix and spectral gap of ``cfg.topology``.

    Pi is dense up to 2,048 nodes (bit-identical to before sparse matrices existed) and a
    csr_array above on a sparse graph; the check and the gap never densify it."""
    t = cfg.topology
    graph = build_graph(t.name, t.n, path=t.path, **t.params)
    Pi = mixing_matrix(graph, t.mixing)
    report = validate_mixing(Pi, graph)
    return graph, Pi, float(report.spectral_gap)


def _labelled(cfg: RunConfig) -> bool:
    """Whether the data are labelled (texts or images; else prompt/response pairs, for
    causal_lm)."""
    d = cfg.data
    if cfg.task.name in ("classify", "image_classify") or d.source == "bbcnews":
        return True
    if d.source == "sharegpt":
        return False
    if d.source == "file":
        columns = set(read_table(d.path)[0].columns)
    else:
        columns = set(read_saved_dataset(d.path)[0].column_names)
    return not ({d.prompt_column, d.response_column} <= columns or "messages" in columns)


def missing_paths(cfg: RunConfig) -> list[str]:
    """Every file or folder the config names that is not there, each said with where it was
    looked for (a preset for weights or data that live elsewhere names all of them at once)."""
    wanted = []
    if cfg.model.name == "path":
        wanted.append(("model.path", cfg.model.path, "a transformers model folder"))
    if cfg.data.source in ("file", "datasets", "images"):
        wanted.append(("data.path", cfg.data.path, "the data"))
    if cfg.topology.name == "file":
        wanted.append(("topology.path", cfg.topology.path, "an edge list or GraphML file"))
    if cfg.schedule.compute == "trace":
        wanted.append(("schedule.trace_path", cfg.schedule.trace_path, "a compute trace"))
    return [
        f"{key}={str(value)!r} ({what}) does not exist: looked for "
        f"{Path(value).expanduser().resolve()}"
        for key, value, what in wanted
        if value and not Path(value).expanduser().exists()
    ]


def prepare(cfg: RunConfig) -> Prepared:
    """Load, split, partition and tokenise the data; build and check the graph and model.

    algorithm.name=centralized: the partition of the topology.n nodes is drawn as for any
    method, then pooled into the one shard of a one-node run."""
    missing = missing_paths(cfg)
    if missing:
        raise ConfigError("missing input:\n  - " + "\n  - ".join(missing))
    _check_local_devices(cfg)
    graph, Pi, gap = make_graph(cfg)
    n = Pi.shape[0]
    round_mixings(cfg, Pi)  # a time-varying graph's matrices are checked here, before Ray
    d, task = cfg.data, cfg.task.name
    labelled = _labelled(cfg)
    if task == "image_classify":
        model_config = check_model(cfg.model, task, 2)  # the size images are stored at
        size = cfg.model.image_size or native_size(model_config)
        ds = load_image_dataset(d.source, d.path, d.image_column, d.label_column, size)
        labels, class_names = ds.labels, ds.class_names
    elif labelled:
        fields = prompt_fields(cfg.task.prompt) if task == "causal_lm" else []
        if fields and d.source == "bbcnews":
            raise ConfigError(
                f"task.prompt names the column(s) {fields}, but data.source='bbcnews' has only "
                "{text} and {choices}: remove them or use a file or datasets source"
            )
        ds = load_text_dataset(d.source, d.path, d.text_column, d.label_column, fields)
        labels, class_names = ds.labels, ds.class_names
    else:
        ds = load_prompt_dataset(
            d.source, d.path, d.prompt_column, d.response_column, d.max_samples
        )
        labels, class_names = np.zeros(len(ds), dtype=np.int64), ()
        if d.partition != "iid" and d.split_by == "label":
            raise ConfigError(
                f"data.partition={d.partition!r} splits by label, and prompt/response data "
                "have none: use data.partition=iid, or split by data.split_by=length or cluster"
            )
    split_keys = labels
    if d.split_by != "label":
        if task == "image_classify":
            raise ConfigError(f"data.split_by={d.split_by!r} groups texts: images split by label")
        texts = ds.texts if labelled else [p + " " + r for p, r in zip(ds.prompts, ds.responses)]
        split_keys = text_groups(texts, d.split_by, d.groups, cfg.seed)
    keep = stratified_subsample(np.arange(len(ds)), labels, d.max_samples, cfg.seed)
    train_idx, test_idx = train_test_split(labels[keep], d.test_fraction, cfg.seed)
    train_idx, test_idx = keep[train_idx], keep[test_idx]
    test_idx = stratified_subsample(test_idx, labels, d.eval_samples, cfg.seed)
    parts, overlap = _shards(cfg, split_keys[train_idx], n)
    local_parts = None
    if cfg.eval.on != "shared":
        parts, local_parts = _local_splits(parts, d.test_fraction, cfg.seed)
    if cfg.algorithm.name == "centralized":  # the oracle: one node holding every node's rows
        parts = [np.concatenate(parts)]
        local_parts = None if local_parts is None else [np.concatenate(local_parts)]
        graph, Pi, gap = nx.empty_graph(1), np.ones((1, 1)), 1.0
    num_labels = len(class_names)
    model_config = check_model(cfg.model, task, max(num_labels, 1))
    choices: tuple = ()
    pad = 0
    if task == "image_classify":
        train = Shard(labels=labels[train_idx], pixels=ds.pixels[train_idx])
        eval_set = Shard(labels=labels[test_idx], pixels=ds.pixels[test_idx])
        if model_config.model_type == "clip":  # the zero-shot head: one prompt per class
            tok = load_tokenizer(cfg.model)
            prompts = [cfg.task.class_prompt.replace("{class}", c) for c in class_names]
            choices = tuple(tuple(ids) for ids in tok(prompts)["input_ids"])
    else:
        tok = load_tokenizer(cfg.model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if task == "classify":
        texts = ds.texts
        train = tokenize(tok, [texts[i] for i in train_idx], d.max_length, labels[train_idx])
        eval_set = tokenize(tok, [texts[i] for i in test_idx], d.max_length, labels[test_idx])
    elif task == "causal_lm":
        rows, choices = _causal_rows(cfg, tok, ds, labelled)
        train, eval_set = rows(train_idx), rows(test_idx)
    shards = {i: train.take(p) for i, p in enumerate(parts)}
    local_evals = (
        None if local_parts is None else {i: train.take(p) for i, p in enumerate(local_parts)}
    )
    hist = label_histogram(labels[train_idx], parts, max(num_labels, 1))[:, :num_labels]
    return Prepared(
        graph,
        Pi,
        gap,
        shards,
        eval_set,
        num_labels,
        class_names,
        hist,
        task,
        choices,
        int(pad),
        local_evals,
        overlap,
    )


def _shards(
    cfg: RunConfig, keys: np.ndarray, n: int
) -> tuple[list[np.ndarray], ShardOverlap | None]:
    """Each node's rows (indices into the training pool, whose split keys are ``keys``): a
    disjoint partition, or with ``data.samples_per_node`` K rows per node drawn
    independently (shards may overlap), with what they share."""
    d = cfg.data
    if d.samples_per_node is not None:
        parts = draw_shards(
            keys,
            n,
            d.partition,
            d.samples_per_node,
            alpha=d.alpha,
            classes_per_node=d.classes_per_node,
            seed=cfg.seed,
        )
        return parts, shard_overlap(parts, len(keys))
    if len(keys) < n:
        raise ConfigError(
            f"only {len(keys)} training samples for {n} nodes: use fewer nodes "
            f"(topology.n), more data (data.max_samples={d.max_samples}), or shards that "
            "overlap (data.samples_per_node=K: each node draws K samples from the pool)"
        )
    parts = partition(
        keys,
        n,
        d.partition,
        alpha=d.alpha,
        classes_per_node=d.classes_per_node,
        shots=d.shots,
        seed=cfg.seed,
    )
    return parts, None


def _check_local_devices(cfg: RunConfig) -> None:
    """A local run asking for GPUs this machine lacks stops here, not in Ray's scheduler
    (which would wait for them forever)."""
    if cfg.cluster.address is not None:
        return
    import torch

    gpus = torch.cuda.device_count()
    c = cfg.cluster
    if c.device == "cuda" and gpus == 0:
        raise ConfigError("cluster.device='cuda' but this machine has no CUDA GPU: use auto or cpu")
    if c.gpus_per_host and c.gpus_per_host > gpus:
        raise ConfigError(
            f"cluster.gpus_per_host={c.gpus_per_host:g} is more than the {gpus} GPU(s) on this "
            "machine: lower it, or leave it null to share what there is"
        )
    if cfg.model.dtype == "float16" and (c.device == "cpu" or gpus == 0):
        raise ConfigError(
            "model.dtype='float16' runs on GPUs only and this machine has none: use "
            "model.dtype=bfloat16 (or float32) on CPUs"
        )


def prompt_fields(template: str) -> list[str]:
    """The data columns a prompt names besides {text} and {choices} (BoolQ's {question})."""
    names = re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", template)
    return sorted(set(names) - {"text", "choices"})


def _causal_rows(cfg: RunConfig, tok, ds, labelled: bool):
    """(rows(idx) -> Shard, choices) of a causal-LM task: labelled texts become the prompt
    (each row's own columns filled in) answered by the class name; prompt/response pairs are
    used as they are."""
    d, chat = cfg.data, cfg.task.chat_template
    if labelled:
        template = cfg.task.prompt.replace("{choices}", ", ".join(ds.class_names))
        bodies = ds.texts
        choices = tuple(tuple(c) for c in answer_ids(tok, ds.class_names, chat))
        answers = [list(choices[y]) for y in ds.labels]
        row_labels = ds.labels
        fields = prompt_fields(template)
    else:
        template, fields, choices = "{text}", [], ()
        bodies = ds.prompts
        answers = answer_ids(tok, ds.responses, chat)
        row_labels = np.full(len(ds), -1, dtype=np.int64)
    frames: dict[str, tuple[list[int], list[int]]] = {}

    def frame(i: int) -> tuple[list[int], list[int]]:
        text = template
        for f in fields:
            text = text.replace("{" + f + "}", ds.fields[f][i])
        if text not in frames:  # one template: one frame for all rows
            head, _, tail = text.partition("{text}")
            frames[text] = prompt_frame(tok, head, tail, chat)
        return frames[text]

    def rows(idx: np.ndarray) -> Shard:
        return tokenize_prompts(
            tok,
            [bodies[i] for i in idx],
            [answers[i] for i in idx],
            [frame(i) for i in idx],
            d.max_length,
            row_labels[idx],
        )

    return rows, choices


def _local_splits(
    parts: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each node's partition split into (train, own test): ``fraction`` of it, at least one
    row each, drawn from (seed, node) alone."""
    train, test = [], []
    for i, p in enumerate(parts):
        if len(p) < 2:
            raise ConfigError(
                f"node {i} holds {len(p)} training sample(s); eval.on=local needs at least 2 "
                "per node: use fewer nodes or more data (data.max_samples)"
            )
        perm = np.random.default_rng([seed, 9, i]).permutation(p)
        k = min(max(1, round(len(p) * fraction)), len(p) - 1)
        test.append(np.sort(perm[:k]))
        train.append(np.sort(perm[k:]))
    return train, test
