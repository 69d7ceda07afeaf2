"""Data loading and partitioning for decaf-ray (numpy/pandas/datasets only)."""

from decaf_ray.data.partition import (
    PARTITION_SCHEMES,
    label_histogram,
    partition,
    stratified_subsample,
    train_test_split,
)
from decaf_ray.data.shard import Shard, tokenize
from decaf_ray.data.sources import (
    FILE_EXTENSIONS,
    KNOWN_SOURCES,
    DataError,
    TextDataset,
    load_text_dataset,
)

__all__ = [
    "FILE_EXTENSIONS",
    "KNOWN_SOURCES",
    "PARTITION_SCHEMES",
    "DataError",
    "Shard",
    "TextDataset",
    "label_histogram",
    "load_text_dataset",
    "partition",
    "stratified_subsample",
    "tokenize",
    "train_test_split",
]
