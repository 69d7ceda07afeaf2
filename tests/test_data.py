"""Tests for decaf_ray.data: sources (BBC News, files, saved HF datasets) and partitioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from decaf_ray.data import (
    DataError,
    TextDataset,
    label_histogram,
    load_text_dataset,
    partition,
    stratified_subsample,
    train_test_split,
)

BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")

# --------------------------------------------------------------------------- sources


def test_bbcnews_loads_sorted_deterministic() -> None:
    ds = load_text_dataset("bbcnews")
    assert isinstance(ds, TextDataset)
    assert len(ds) == 2225
    assert ds.num_classes == 5
    assert ds.class_names == BBC_CLASSES
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels).tolist() == [510, 386, 417, 511, 401]
    # Sorted class folders, sorted files: labels are non-decreasing, first file is business/001.
    assert np.all(np.diff(ds.labels) >= 0)
    assert ds.texts[0].startswith("Ad sales boost Time Warner profit")
    assert all(t and t == t.strip() for t in ds.texts)
    assert load_text_dataset("bbcnews") is ds  # cached
    assert not ds.labels.flags.writeable


FRAME = pd.DataFrame(
    {
        "body": ["alpha text", "beta text", "", "gamma text", "delta text", None],
        "str_label": ["pos", "neg", "pos", "neg", "pos", "neg"],
        "int_label": [7, 3, 7, 3, 9, 9],
    }
)


def _write(df: pd.DataFrame, path: Path) -> None:
    ext = path.suffix
    if ext == ".csv":
        df.to_csv(path, index=False)
    elif ext == ".json":
        df.to_json(path, orient="records")
    elif ext == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path, index=False)


@pytest.mark.parametrize("ext", [".csv", ".json", ".jsonl", ".parquet"])
def test_file_roundtrip_string_and_int_labels(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"data{ext}"
    _write(FRAME, path)
    kept = ["alpha text", "beta text", "gamma text", "delta text"]  # empty/None texts dropped

    ds = load_text_dataset("file", str(path), text_column="body", label_column="str_label")
    assert ds.texts == tuple(kept)
    assert ds.class_names == ("neg", "pos")
    assert ds.labels.tolist() == [1, 0, 0, 1]

    ds = load_text_dataset("file", str(path), text_column="body", label_column="int_label")
    assert ds.texts == tuple(kept)
    assert ds.class_names == ("3", "7", "9")
    assert ds.labels.tolist() == [1, 0, 0, 2]
    assert ds.labels.dtype == np.int64


def test_file_drops_nan_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [2.0, np.nan, 5.0]}).to_csv(path, index=False)
    ds = load_text_dataset("file", str(path))
    assert ds.texts == ("a", "c")
    assert ds.class_names == ("2", "5")
    assert ds.labels.tolist() == [0, 1]


def test_json_lines_in_json_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("x", "b"), ("y", "a")])
    )
    ds = load_text_dataset("file", str(path))
    assert ds.texts == ("x", "y")
    assert ds.labels.tolist() == [1, 0]


def test_hf_dataset_and_datasetdict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = {"text": ["one", "two", "three", "four"], "label": [1, 0, 1, 0]}
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    single = datasets.Dataset.from_dict(data, features=features)
    single.save_to_disk(str(tmp_path / "single"))
    ds = load_text_dataset("datasets", str(tmp_path / "single"))
    assert ds.texts == ("one", "two", "three", "four")
    assert ds.labels.tolist() == [1, 0, 1, 0]
    assert ds.class_names == ("neg", "pos")  # ClassLabel names

    plain = datasets.Dataset.from_dict({"sentence": ["u", "v", "w"], "y": ["b", "a", "b"]})
    other = datasets.Dataset.from_dict({"sentence": ["z"], "y": ["c"]})
    datasets.DatasetDict({"train": plain, "test": other}).save_to_disk(str(tmp_path / "dd"))
    ds = load_text_dataset(
        "datasets", str(tmp_path / "dd"), text_column="sentence", label_column="y"
    )
    assert ds.texts == ("u", "v", "w")  # train split only
    assert ds.class_names == ("a", "b")
    assert ds.labels.tolist() == [1, 0, 1]

    datasets.DatasetDict({"validation": plain}).save_to_disk(str(tmp_path / "nosplit"))
    with pytest.raises(DataError, match="train") as exc:
        load_text_dataset("datasets", str(tmp_path / "nosplit"), text_column="sentence")
    assert "validation" in str(exc.value)

    with pytest.raises(DataError) as exc:
        load_text_dataset("datasets", str(tmp_path / "single"), label_column="topic")
    assert "'topic'" in str(exc.value) and "'text'" in str(exc.value)


def test_source_errors_name_bad_value(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError) as exc:
        load_text_dataset("file", str(missing))
    assert str(missing) in str(exc.value)

    bad_ext = tmp_path / "data.xlsx"
    bad_ext.write_text("x")
    with pytest.raises(DataError) as exc:
        load_text_dataset("file", str(bad_ext))
    assert ".xlsx" in str(exc.value) and ".parquet" in str(exc.value)

    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a"], "category": ["x"]}).to_csv(path, index=False)
    with pytest.raises(DataError) as exc:
        load_text_dataset("file", str(path))
    msg = str(exc.value)
    assert "'label'" in msg and str(path) in msg and "category" in msg

    with pytest.raises(DataError) as exc:
        load_text_dataset("imdb_remote")
    assert "imdb_remote" in str(exc.value) and "bbcnews" in str(exc.value)

    with pytest.raises(DataError, match="path"):
        load_text_dataset("file")
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- partitioning


def _labels(n: int = 600, c: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, c, size=n).astype(np.int64)


SCHEMES = ["iid", "dirichlet", "classes"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partition_disjoint_sorted_deterministic(scheme: str) -> None:
    labels = _labels()
    parts = partition(labels, 8, scheme, seed=3)
    assert len(parts) == 8
    assert all(len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no duplicates
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    # iid/dirichlet cover everything; classes too here since 8 nodes * 2 >= 5 classes.
    assert np.array_equal(np.sort(allidx), np.arange(len(labels)))
    again = partition(labels, 8, scheme, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(labels, 8, scheme, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_near_equal() -> None:
    parts = partition(_labels(603), 10, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 603


def _mean_max_class_fraction(labels: np.ndarray, parts: list[np.ndarray], c: int) -> float:
    hist = label_histogram(labels, parts, c)
    return float(np.mean(hist.max(axis=1) / hist.sum(axis=1)))


def test_dirichlet_small_alpha_more_skewed() -> None:
    labels = _labels(2000, 5)
    skewed = np.mean(
        [
            _mean_max_class_fraction(
                labels, partition(labels, 10, "dirichlet", alpha=0.1, seed=s), 5
            )
            for s in range(3)
        ]
    )
    flat = np.mean(
        [
            _mean_max_class_fraction(
                labels, partition(labels, 10, "dirichlet", alpha=100.0, seed=s), 5
            )
            for s in range(3)
        ]
    )
    assert skewed > 0.6
    assert flat < 0.35
    assert skewed > flat + 0.3


def test_dirichlet_every_node_nonempty_even_when_tight() -> None:
    labels = np.array([0] * 5 + [1] * 5, dtype=np.int64)
    for seed in range(20):
        parts = partition(labels, 10, "dirichlet", alpha=0.01, seed=seed)
        assert [len(p) for p in parts] == [1] * 10
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(10))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_classes_scheme_exact_classes_per_node(k: int) -> None:
    labels = _labels(1000, 5)
    parts = partition(labels, 7, "classes", classes_per_node=k, seed=1)
    for p in parts:
        assert len(np.unique(labels[p])) == k
    covered = set(np.unique(labels[np.concatenate(parts)]).tolist())
    assert covered == set(range(5))  # 7 * k >= 5: all classes covered
    # each class split evenly among its holders
    hist = label_histogram(labels, parts, 5)
    for c in range(5):
        held = hist[:, c][hist[:, c] > 0]
        assert held.max() - held.min() <= 1


def test_histogram_rows_sum_to_shard_sizes() -> None:
    labels = _labels(500, 4)
    parts = partition(labels, 6, "dirichlet", alpha=0.5, seed=2)
    hist = label_histogram(labels, parts, 4)
    assert hist.shape == (6, 4) and hist.dtype == np.int64
    assert hist.sum(axis=1).tolist() == [len(p) for p in parts]
    assert hist.sum(axis=0).tolist() == np.bincount(labels, minlength=4).tolist()


def test_partition_errors() -> None:
    labels = _labels(7, 3)
    with pytest.raises(DataError) as exc:
        partition(labels, 10, "iid")
    assert "7 samples" in str(exc.value) and "10 nodes" in str(exc.value)
    with pytest.raises(DataError) as exc:
        partition(_labels(), 4, "pathological")
    assert "pathological" in str(exc.value) and "dirichlet" in str(exc.value)
    with pytest.raises(DataError, match="alpha"):
        partition(_labels(), 4, "dirichlet", alpha=0.0)
    with pytest.raises(DataError, match="alpha"):
        partition(_labels(), 4, "dirichlet", alpha=-1.0)
    with pytest.raises(DataError, match="classes_per_node"):
        partition(_labels(), 4, "classes", classes_per_node=0)
    with pytest.raises(DataError) as exc:
        partition(_labels(), 4, "classes", classes_per_node=6)
    assert "6" in str(exc.value) and "5" in str(exc.value)
    with pytest.raises(DataError, match="n_nodes"):
        partition(_labels(), 0, "iid")


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5])
def test_stratified_split(frac: float) -> None:
    labels = np.repeat(np.arange(4), [40, 13, 7, 100]).astype(np.int64)
    tr, te = train_test_split(labels, frac, seed=0)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
    assert len(np.intersect1d(tr, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(len(labels)))
    assert set(labels[tr].tolist()) == set(labels[te].tolist()) == {0, 1, 2, 3}
    n_c = np.bincount(labels)
    assert np.all(np.abs(np.bincount(labels[te], minlength=4) - frac * n_c) <= 1)
    tr2, te2 = train_test_split(labels, frac, seed=0)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    _, te3 = train_test_split(labels, frac, seed=1)
    assert not np.array_equal(te, te3)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.2, 1.5])
def test_split_bad_fraction(frac: float) -> None:
    with pytest.raises(DataError) as exc:
        train_test_split(_labels(), frac, seed=0)
    assert str(frac) in str(exc.value)


def test_stratified_subsample() -> None:
    labels = np.repeat(np.arange(3), [500, 300, 200]).astype(np.int64)
    idx = np.arange(0, 1000, 2)  # 250/150/100 per class
    sub = stratified_subsample(idx, labels, 100, seed=0)
    assert len(sub) == 100
    assert np.all(np.diff(sub) > 0) and np.all(np.isin(sub, idx))
    assert np.bincount(labels[sub]).tolist() == [50, 30, 20]
    assert np.array_equal(sub, stratified_subsample(idx, labels, 100, seed=0))
    assert not np.array_equal(sub, stratified_subsample(idx, labels, 100, seed=1))
    assert stratified_subsample(idx, labels, None, seed=0) is idx
    assert stratified_subsample(idx, labels, 10_000, seed=0) is idx
