"""The five methods of the DeCAF paper, their LoRA-family relatives (FFA-LoRA, FedSA-LoRA
federated and decentralized, FlexLoRA, FLoRA, RoLoRA federated and decentralized) and the
centralized oracle, one file each, behind
:class:`Algorithm`."""

from decaf_ray.algorithms.base import (
    Adapter,
    Algorithm,
    Inbox,
    mix_adapters,
    pack_adapter,
    unpack_adapter,
)
from decaf_ray.algorithms.centralized import Centralized
from decaf_ray.algorithms.decaf import DeCAF
from decaf_ray.algorithms.dlora import DLoRA
from decaf_ray.algorithms.dlora_fa import DLoRAFA
from decaf_ray.algorithms.fedavg import FedAvg
from decaf_ray.algorithms.fedsa_lora import DFedSALoRA, FedSALoRA
from decaf_ray.algorithms.ffa_lora import FFALoRA
from decaf_ray.algorithms.flexlora import FlexLoRA
from decaf_ray.algorithms.flora import FLoRA
from decaf_ray.algorithms.local import Local
from decaf_ray.algorithms.rolora import DRoLoRA, RoLoRA
from decaf_ray.config import AlgorithmConfig

REGISTRY: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (
        Local,
        FedAvg,
        DLoRA,
        DLoRAFA,
        DeCAF,
        Centralized,
        FFALoRA,
        FedSALoRA,
        DFedSALoRA,
        FlexLoRA,
        FLoRA,
        RoLoRA,
        DRoLoRA,
    )
}


def make_algorithm(cfg: AlgorithmConfig) -> Algorithm:
    """The algorithm named in ``cfg``; ValueError naming the bad name otherwise."""
    if cfg.name not in REGISTRY:
        raise ValueError(f"unknown algorithm {cfg.name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[cfg.name].from_config(cfg)


__all__ = [
    "Adapter",
    "Algorithm",
    "Inbox",
    "mix_adapters",
    "pack_adapter",
    "unpack_adapter",
    "make_algorithm",
    "REGISTRY",
    "Local",
    "FedAvg",
    "DLoRA",
    "DLoRAFA",
    "DeCAF",
    "Centralized",
    "FFALoRA",
    "FedSALoRA",
    "DFedSALoRA",
    "FlexLoRA",
    "FLoRA",
    "RoLoRA",
    "DRoLoRA",
]
