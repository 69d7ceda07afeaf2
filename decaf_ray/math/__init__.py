"""Pure numpy maths for decentralized LoRA: gossip mixing, factored TSVD, consensus metrics.

Conventions: LoRA A is (r, k), B is (d, r), the update is B @ A (d, k). Everything is computed in
float64 and returned as new arrays (inputs are never modified) in the dtype of the first input;
metrics are Python floats. The numpy functions check their inputs and run the batched torch
kernels of :mod:`decaf_ray.math.stacked`, which the engine also calls directly on stacks of
modules and nodes. No Ray and no I/O here.
"""

from decaf_ray.math.metrics import (
    factor_consensus_error,
    interference_norm,
    lowrank_sq_norm,
    payload_bytes,
    product_consensus_error,
)
from decaf_ray.math.mixing import mix, mix_all, renormalise
from decaf_ray.math.tsvd import TSVD, SplitMode, split_factors, tsvd_dense, tsvd_factored

__all__ = [
    "TSVD",
    "SplitMode",
    "factor_consensus_error",
    "interference_norm",
    "lowrank_sq_norm",
    "mix",
    "mix_all",
    "payload_bytes",
    "product_consensus_error",
    "renormalise",
    "split_factors",
    "tsvd_dense",
    "tsvd_factored",
]
