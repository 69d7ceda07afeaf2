"""The frozen base model with peft LoRA, and the map of its trainable slots.

A host builds one peft model and keeps it for its lifetime. Nodes never own a model: each owns
its own ``nn.Parameter`` objects (A and B per adapted module, plus the trainable head), and
:class:`ParamSlots` swaps a node's parameters into the shared model in microseconds, without
copying. The forward pass of peft's LoRA layer only multiplies by these weights, so a slot may
also hold a wider factor (rank n*r), which is how the network-average model is evaluated.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decaf_ray.config import ModelConfig
from decaf_ray.node import zoo


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def model_path(cfg: ModelConfig) -> str:
    """Directory of the pretrained weights (and tokenizer) for ``cfg``."""
    return str(zoo.model_dir(cfg.name, cfg.path))


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer; the tiny random models borrow MiniLM's vocabulary (no download)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(model_path(cfg))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass(frozen=True)
class BaseModel:
    """How to make the frozen base model of a task: its (transformers-style) config, and
    ``make(weights)``, which builds it with its pretrained weights or, with ``weights=False``
    (the random tiny models, or a weightless copy on the meta device), without."""

    config: Any
    make: Callable[[bool], nn.Module]
    kind: str  # what the task needs, for messages: "sequence classifier", "causal LM"...


def _architecture(cfg: ModelConfig, task: str, num_labels: int) -> BaseModel:
    """The base model of ``cfg`` for ``task``."""
    if task == "image_classify":
        return _vision(cfg, num_labels)
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BertConfig,
        GPT2Config,
        LlamaConfig,
    )

    kwargs = {"num_labels": num_labels} if task == "classify" else {}
    if cfg.name in zoo.RANDOM:
        vocab = AutoConfig.from_pretrained(zoo.minilm_dir()).vocab_size
        if cfg.name == "tiny-bert":
            config = BertConfig(vocab_size=vocab, **kwargs, **zoo.TINY_BERT)
        elif cfg.name == "tiny-gpt2":
            config = GPT2Config(vocab_size=vocab, pad_token_id=0, **kwargs, **zoo.TINY_GPT2)
        else:
            config = LlamaConfig(vocab_size=vocab, pad_token_id=0, **kwargs, **zoo.TINY_LLAMA)
    else:
        config = _folder_config(cfg, **kwargs)
    auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
    kind = "causal LM" if task == "causal_lm" else "sequence classifier"
    return _transformers(cfg, config, auto, kind)


def _folder(cfg: ModelConfig) -> str:
    path = model_path(cfg)
    if not (Path(path) / "config.json").is_file():
        raise ValueError(
            f"model.path={path!r} holds no config.json: give a transformers model folder "
            "(one saved with save_pretrained)"
        )
    return path


def _folder_config(cfg: ModelConfig, **kwargs):
    """The config of the model folder, or one clear error when transformers does not know
    its architecture."""
    import json

    from transformers import AutoConfig

    path = _folder(cfg)
    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except (ValueError, KeyError) as exc:
        import transformers

        kind = json.loads((Path(path) / "config.json").read_text()).get("model_type")
        raise ValueError(
            f"model.path={path!r} holds a {kind!r} model, an architecture transformers "
            f"{transformers.__version__} does not know: give a folder of a known one (llama, "
            "qwen2, mistral, gpt2, bert, vit, clip...)"
        ) from exc


def _transformers(cfg: ModelConfig, config, auto, kind: str, **load) -> BaseModel:
    def make(weights: bool) -> nn.Module:
        if weights and cfg.name not in zoo.RANDOM:
            return auto.from_pretrained(model_path(cfg), config=config, dtype=torch.float32, **load)
        # Auto classes build from a config with from_config, model classes (CLIP) directly
        return auto.from_config(config) if hasattr(auto, "from_config") else auto(config)

    return BaseModel(config, make, kind)


def _vision(cfg: ModelConfig, num_labels: int) -> BaseModel:
    """ViT-style classifiers, CLIP (zero-shot head) and EfficientNet-Lite0."""
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        CLIPConfig,
        CLIPModel,
        ViTConfig,
    )

    kind = "image classifier"
    if cfg.name == "efficientnet-lite0":
        from decaf_ray.node import efficientnet

        size = cfg.image_size or 224  # its "same" padding is fixed for one input size
        config = efficientnet.Lite0Config(num_labels, image_size=size)
        return BaseModel(
            config, lambda weights: efficientnet.build_lite0(num_labels, weights, size), kind
        )
    if cfg.name == "tiny-vit":
        config = ViTConfig(num_labels=num_labels, **zoo.TINY_VIT)
    elif cfg.name == "tiny-clip":
        tok = AutoConfig.from_pretrained(zoo.minilm_dir())
        text = dict(
            vocab_size=tok.vocab_size,
            pad_token_id=tok.pad_token_id,
            bos_token_id=101,  # MiniLM's [CLS] and [SEP]: the text tower pools at [SEP]
            eos_token_id=102,
            **zoo.TINY_CLIP_TOWER,
        )
        vision = dict(image_size=32, patch_size=8, **zoo.TINY_CLIP_TOWER)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    else:
        config = _folder_config(cfg)
        if config.model_type != "clip":
            config = _folder_config(cfg, num_labels=num_labels)
    if config.model_type == "clip":
        return _transformers(cfg, config, CLIPModel, kind)
    # a checkpoint's own head (ImageNet's 1000 classes) is replaced by one for our labels
    return _transformers(
        cfg, config, AutoModelForImageClassification, kind, ignore_mismatched_sizes=True
    )


def image_head(config) -> str | None:
    """The trainable classification head of a vision model (None: CLIP's zero-shot head,
    which is the text tower itself)."""
    return None if config.model_type == "clip" else "classifier"


def target_modules(cfg: ModelConfig, config) -> list[str]:
    """The LoRA targets: as configured, else the usual ones of the architecture."""
    if cfg.target_modules:
        return list(cfg.target_modules)
    if config.model_type not in zoo.DEFAULT_TARGETS:
        raise ValueError(
            f"no default LoRA targets for a {config.model_type!r} model: set "
            "model.target_modules, e.g. [q_proj, v_proj]"
        )
    return list(zoo.DEFAULT_TARGETS[config.model_type])


def build_peft_model(cfg: ModelConfig, task: str, num_labels: int, seed: int) -> nn.Module:
    """The base model for ``task`` wrapped by peft LoRA; identical for a given seed.

    Raises ValueError naming the module when ``cfg.r`` exceeds what an adapted layer allows.
    """
    from peft import LoraConfig, get_peft_model

    _quiet_transformers()
    torch.manual_seed(seed)  # a new classification head is random: same seed, same head
    arch = _architecture(cfg, task, num_labels)
    base = arch.make(True).to(getattr(torch, cfg.dtype))
    if getattr(base.config, "pad_token_id", None) is None and task != "image_classify":
        base.config.pad_token_id = 0
    targets = target_modules(cfg, arch.config)
    _check_targets(base, cfg, targets)
    if task == "image_classify":
        head = image_head(arch.config)
        extra = dict(modules_to_save=[head] if head else None)
    else:
        extra = dict(task_type="CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS")
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=arch.config.model_type == "gpt2",
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        **extra,
    )
    # LoRA factors stay float32 on a bfloat16/float16 base (peft casts around them)
    model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    _float32_heads(model)
    return model


def _float32_heads(model: nn.Module) -> None:
    """Keep every trainable tensor outside the LoRA layers (the head) in float32 on a
    half-precision base: its input is cast up, so AdamW and the exchanged numpy arrays
    are float32 whatever the base."""
    from peft.tuners.lora import LoraLayer

    lora = {id(p) for m in model.modules() if isinstance(m, LoraLayer) for p in m.parameters()}
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if isinstance(module, LoraLayer) or not own or id(own[0]) in lora:
            continue
        if all(p.dtype == torch.float32 for p in own):
            continue
        module.float()
        module.register_forward_pre_hook(
            lambda _m, args: tuple(a.float() if torch.is_floating_point(a) else a for a in args)
        )


def check_model(cfg: ModelConfig, task: str, num_labels: int) -> Any:
    """Check architecture, target modules and rank on a weightless (meta-device) copy: fast,
    on the driver, before any host starts. Returns the model's config."""
    _quiet_transformers()
    arch = _architecture(cfg, task, num_labels)
    try:
        with torch.device("meta"):
            base = arch.make(False)
    except ValueError as exc:  # transformers: "Unrecognized configuration class ..."
        raise ValueError(
            f"task.name={task!r} needs a {arch.kind}, but model {cfg.name!r} is a "
            f"{arch.config.model_type!r} model that transformers cannot build as one; choose "
            "another model or task"
        ) from exc
    _check_targets(base, cfg, target_modules(cfg, arch.config))
    if task == "image_classify":
        head = image_head(arch.config)
        if head is not None and head not in dict(base.named_children()):
            raise ValueError(
                f"model {cfg.name!r} ({arch.config.model_type}) has no classification head "
                f"named {head!r}: give an image-classification or CLIP model folder"
            )
    return arch.config


def _dims(layer: nn.Module) -> tuple[int, int] | None:
    """(out, in) of the matrix LoRA factors in an adaptable layer: a linear map, GPT-2's
    Conv1D (weight stored in x out) or a convolution (in: channels x kernel area)."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]
        return layer.out_channels, layer.in_channels * k // layer.groups
    if type(layer).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D
        fan_in, fan_out = layer.weight.shape
        return int(fan_out), int(fan_in)
    return None


def _check_targets(base: nn.Module, cfg: ModelConfig, targets: list[str]) -> None:
    leaves = {name.rsplit(".", 1)[-1]: m for name, m in base.named_modules()}
    for target in targets:
        layer = leaves.get(target)
        dims = None if layer is None else _dims(layer)
        if dims is None:
            adaptable = sorted(
                {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if _dims(m) is not None}
            )
            what = "no module named" if layer is None else "cannot adapt the module"
            raise ValueError(
                f"model.target_modules: {what} {target!r}; linear and convolution layers "
                f"are {adaptable}"
            )
        if cfg.r > min(dims):
            raise ValueError(
                f"model.r={cfg.r} is larger than module {target!r} allows "
                f"({dims[0]} x {dims[1]}); use r <= {min(dims)}"
            )


@dataclass(frozen=True)
class Slot:
    """Where one trainable tensor lives: ``owner.<attr>`` is the parameter."""

    key: str  # "<module>.A", "<module>.B" or an extra's own name
    owner: nn.Module
    attr: str


class ParamSlots:
    """The trainable tensors of the shared model, by key, and the means to swap them."""

    def __init__(self, model: nn.Module) -> None:
        from peft.tuners.lora import LoraLayer

        self.lora: list[tuple[str, Slot, Slot]] = []  # (module, A slot, B slot)
        self.extra: list[Slot] = []
        lora_ids = set()
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                short = name.removeprefix("base_model.model.")
                a_mod, b_mod = module.lora_A["default"], module.lora_B["default"]
                self.lora.append(
                    (
                        short,
                        Slot(f"{short}.A", a_mod, "weight"),
                        Slot(f"{short}.B", b_mod, "weight"),
                    )
                )
                lora_ids.update(id(p) for p in module.parameters())
                magnitude = getattr(module, "lora_magnitude_vector", {})
                if "default" in magnitude:  # DoRA: one magnitude per output, travels as an extra
                    self.extra.append(Slot(f"{short}.magnitude", magnitude["default"], "weight"))
        for name, param in model.named_parameters():
            if param.requires_grad and id(param) not in lora_ids:
                owner_name, attr = name.rsplit(".", 1)
                short = owner_name.removeprefix("base_model.model.").replace(
                    "modules_to_save.default.", ""
                )
                self.extra.append(Slot(f"{short}.{attr}", model.get_submodule(owner_name), attr))

    @property
    def modules(self) -> list[str]:
        return [m for m, _, _ in self.lora]

    def all(self) -> list[Slot]:
        return [s for _, a, b in self.lora for s in (a, b)] + self.extra

    def current(self) -> dict[str, nn.Parameter]:
        """The parameters now installed, by key (the model's own at construction)."""
        return {s.key: getattr(s.owner, s.attr) for s in self.all()}

    def install(self, params: dict[str, nn.Parameter]) -> None:
        """Put ``params`` into the model (no copy): the next forward uses them."""
        for s in self.all():
            # nn.Module.__setattr__ registers a Parameter; a plain tensor needs the dict.
            value = params[s.key]
            if isinstance(value, nn.Parameter):
                setattr(s.owner, s.attr, value)
            else:
                s.owner._parameters[s.attr] = value  # type: ignore[assignment]
