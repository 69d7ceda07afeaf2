"""Data loading and partitioning for decaf-ray (numpy/pandas/datasets only)."""

from decaf_ray.data.instructions import PromptDataset, load_prompt_dataset
from decaf_ray.data.partition import (
    PARTITION_SCHEMES,
    label_histogram,
    partition,
    stratified_subsample,
    train_test_split,
)
from decaf_ray.data.shard import Shard, answer_ids, prompt_frame, tokenize, tokenize_prompts
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
    "PromptDataset",
    "Shard",
    "TextDataset",
    "label_histogram",
    "load_text_dataset",
    "partition",
    "stratified_subsample",
    "answer_ids",
    "load_prompt_dataset",
    "prompt_frame",
    "tokenize",
    "tokenize_prompts",
    "train_test_split",
]
