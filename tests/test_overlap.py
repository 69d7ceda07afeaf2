"""Shards that may overlap (data.samples_per_node): more nodes than samples, and disjoint
partitions left exactly as they were."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import net, tiny_config
from decaf_ray.config import ConfigError
from decaf_ray.data import DataError, partition
from decaf_ray.data.overlap import draw_shards, shard_overlap
from decaf_ray.engine.log import NETWORK

LABELS = np.random.default_rng(7).integers(0, 5, size=300)  # (300,) classes 0..4


def _digest(groups) -> str:
    """sha256 of each group's arrays, a separator after each group."""
    h = hashlib.sha256()
    for group in groups:
        for a in group:
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


# golden values computed with the code before data.samples_per_node existed (commit 277bec9)
@pytest.mark.parametrize(
    "scheme, digest",
    [
        ("iid", "9952cdcea33fc570"),
        ("dirichlet", "fde508529763c2f6"),
        ("classes", "977730145b678ae5"),
        ("shots", "2dc7a57ede6ace00"),
    ],
)
def test_disjoint_partitions_are_unchanged(scheme, digest):
    parts = partition(LABELS, 12, scheme, alpha=0.3, classes_per_node=2, shots=3, seed=5)
    assert _digest([np.asarray(p, dtype=np.int64)] for p in parts) == digest


def test_existing_config_gives_the_same_shards_and_no_overlap_rows():
    from decaf_ray.prepare import prepare

    prep = prepare(tiny_config())  # golden value from commit 277bec9
    shards = [(s.input_ids, s.labels) for _, s in sorted(prep.shards.items())]
    assert _digest(shards) == "cfad5442aa755b90"
    assert prep.overlap is None


def test_each_node_draws_k_distinct_rows_independently_of_n():
    for scheme in ("iid", "dirichlet", "classes"):
        few = draw_shards(LABELS, 5, scheme, 7, alpha=0.3, seed=1)
        many = draw_shards(LABELS, 900, scheme, 7, alpha=0.3, seed=1)  # 3 x the pool
        assert len(many) == 900 and all(len(p) == 7 == len(np.unique(p)) for p in many)
        assert all(np.array_equal(a, b) for a, b in zip(few, many[:5]))  # node i: (seed, i)
        other = draw_shards(LABELS, 5, scheme, 7, alpha=0.3, seed=2)
        assert not all(np.array_equal(a, b) for a, b in zip(few, other))


def test_the_partition_rule_shapes_each_draw():
    classes = draw_shards(LABELS, 40, "classes", 6, classes_per_node=2, seed=0)
    assert all(len(np.unique(LABELS[p])) == 2 for p in classes)  # 3 + 3 of its two classes

    def top_share(parts):  # mean share of a node's most frequent class
        return np.mean([np.bincount(LABELS[p], minlength=5).max() / len(p) for p in parts])

    skewed = draw_shards(LABELS, 200, "dirichlet", 20, alpha=0.05, seed=0)
    flat = draw_shards(LABELS, 200, "dirichlet", 20, alpha=100.0, seed=0)
    assert top_share(skewed) > 0.8 and top_share(flat) < 0.45


def test_overlap_figures_on_a_hand_example():
    o = shard_overlap([np.array([0, 1]), np.array([1, 2]), np.array([3])], pool_size=5)
    # nodes 0 and 1 share row 1 (half of each), node 2 shares nothing; 5 rows held, 4 distinct
    assert o.overlap == pytest.approx(1 / 3) and o.copies == 1.25 and o.coverage == 0.8
    disjoint = shard_overlap(partition(LABELS, 12, "iid", seed=0), 300)
    assert (disjoint.overlap, disjoint.copies, disjoint.coverage) == (0.0, 1.0, 1.0)


def test_bad_samples_per_node_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="data.samples_per_node=0 must be at least 1"):
        tiny_config(data__samples_per_node=0)
    with pytest.raises(ConfigError, match="partition=shots already fixes"):
        tiny_config(data__samples_per_node=4, data__partition="shots")
    with pytest.raises(DataError, match="not data.partition='shots'"):
        draw_shards(LABELS, 3, "shots", 4)


def test_more_nodes_than_samples_needs_overlap_and_logs_it(run_local):
    from decaf_ray.prepare import prepare

    few = dict(topology__n=24, data__max_samples=20, data__eval_samples=8)  # 15 to train
    with pytest.raises(ConfigError, match=r"15 training samples for 24 nodes.*samples_per_node"):
        prepare(tiny_config(**few))
    frame = run_local(**few, data__samples_per_node=3, train__rounds=1, eval__every=5)
    overlap, copies = net(frame, "shard_overlap")[0], net(frame, "sample_copies")[0]
    coverage = net(frame, "pool_coverage")[0]
    assert 0.9 < overlap <= 1.0 and 0 < coverage <= 1.0
    assert copies * coverage * 15 == pytest.approx(24 * 3)  # 72 rows held, 15 in the pool
    counts = frame[(frame["round"] == 0) & frame.metric.str.startswith("label_count:")]
    assert counts.groupby("node").value.sum().eq(3).all() and counts.node.nunique() == 24
    assert frame[(frame["round"] == 1) & (frame.node == NETWORK)].metric.eq("train_loss").any()
