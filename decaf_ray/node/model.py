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
from pathlib import Path

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


def _architecture(cfg: ModelConfig, task: str, num_labels: int):
    """(transformers config, auto class) of the base model for ``task``."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BertConfig,
        LlamaConfig,
    )

    kwargs = {"num_labels": num_labels} if task == "classify" else {}
    if cfg.name in zoo.RANDOM:
        vocab = AutoConfig.from_pretrained(zoo.minilm_dir()).vocab_size
        if cfg.name == "tiny-bert":
            config = BertConfig(vocab_size=vocab, **kwargs, **zoo.TINY_BERT)
        else:
            config = LlamaConfig(vocab_size=vocab, pad_token_id=0, **kwargs, **zoo.TINY_LLAMA)
    else:
        path = model_path(cfg)
        if not (Path(path) / "config.json").is_file():
            raise ValueError(
                f"model.path={path!r} holds no config.json: give a transformers model folder "
                "(one saved with save_pretrained)"
            )
        config = AutoConfig.from_pretrained(path, **kwargs)
    auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
    return config, auto


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
    config, auto = _architecture(cfg, task, num_labels)
    if cfg.name in zoo.RANDOM:
        base = auto.from_config(config)
    else:
        base = auto.from_pretrained(model_path(cfg), config=config, dtype=torch.float32)
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = 0
    targets = target_modules(cfg, config)
    _check_targets(base, cfg, targets)
    lora = LoraConfig(
        task_type="CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=config.model_type == "gpt2",
    )
    return get_peft_model(base, lora)


def check_model(cfg: ModelConfig, task: str, num_labels: int) -> None:
    """Check architecture, target modules and rank on a weightless (meta-device) copy: fast,
    on the driver, before any host starts."""
    _quiet_transformers()
    config, auto = _architecture(cfg, task, num_labels)
    try:
        with torch.device("meta"):
            base = auto.from_config(config)
    except ValueError as exc:  # transformers: "Unrecognized configuration class ..."
        kind = "causal LM" if task == "causal_lm" else "sequence classifier"
        raise ValueError(
            f"task.name={task!r} needs a {kind}, but model {cfg.name!r} is a "
            f"{config.model_type!r} model that transformers cannot build as one; choose "
            "another model or task"
        ) from exc
    _check_targets(base, cfg, target_modules(cfg, config))


def _check_targets(base: nn.Module, cfg: ModelConfig, targets: list[str]) -> None:
    leaves = {name.rsplit(".", 1)[-1]: m for name, m in base.named_modules()}
    for target in targets:
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
