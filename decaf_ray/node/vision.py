"""What a vision model sees: stored uint8 images turned into its normalised input.

Shards carry images as uint8 (n, H, W, C) at their stored size; :class:`ImageView` makes a
batch of them the model's ``pixel_values``: float in [0, 1], grey repeated to the model's
channels, resized (bilinear, antialiased) to its input size, normalised with its mean and
std. The constants come from the model folder's ``preprocessor_config.json`` where it has
one (a CLIP or ViT checkpoint), else from what the named model was trained with.

This is simpler than a transformers image processor (which resizes with PIL and crops):
results on real checkpoints can differ from theirs slightly; the views are identical on every
node, which is what a comparison of methods needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HALF = (0.5, 0.5, 0.5)  # the tiny random models' (and ViT's usual) normalisation


@dataclass(frozen=True)
class ImageView:
    size: int  # input height = width
    mean: tuple[float, ...] = HALF
    std: tuple[float, ...] = HALF
    channels: int = 3
    interpolate: bool = False  # a ViT/CLIP at a size other than its own: interpolate positions

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, H, W, C) uint8 -> (b, channels, size, size) float, normalised."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True).expand(-1, self.channels, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


def native_size(config) -> int:
    """The input resolution a model was built for (CLIP: its vision tower's)."""
    vision = getattr(config, "vision_config", config)
    return int(getattr(vision, "image_size", 224))


def view_of(config, folder: Path | None, size: int | None) -> ImageView:
    """The view of a model with transformers-style ``config``, at ``size`` (None: its own)."""
    own = native_size(config)
    mean, std = (
        tuple(getattr(config, "image_mean", HALF)),
        tuple(getattr(config, "image_std", HALF)),
    )
    processor = folder / "preprocessor_config.json" if folder is not None else None
    if processor is not None and processor.is_file():
        saved = json.loads(processor.read_text())
        mean = tuple(saved.get("image_mean", mean))
        std = tuple(saved.get("image_std", std))
    vision = getattr(config, "vision_config", config)
    channels = int(getattr(vision, "num_channels", 3))
    wanted = own if size is None else int(size)
    positional = config.model_type in ("vit", "clip", "deit", "beit", "siglip")
    return ImageView(wanted, mean, std, channels, interpolate=positional and wanted != own)
