"""What runs inside a host actor, with no Ray: the host and its nodes, the model, training.

- :mod:`~decaf_ray.node.host`: one frozen base model serving many nodes.
- :mod:`~decaf_ray.node.state`: one node's parameters, optimizer, sampler, data; seeds.
- :mod:`~decaf_ray.node.model`: the peft model and the slots its trainable tensors live in.
- :mod:`~decaf_ray.node.batched`: k nodes in one forward/backward pass.
- :mod:`~decaf_ray.node.optim`: AdamW and its state layout, the learning-rate schedule.
- :mod:`~decaf_ray.node.service`: the typed records a host sends and the service that sends them.
"""

from decaf_ray.node.host import CombineResult, Host, HostSpec, RunSpec, TrainResult
from decaf_ray.node.service import (
    Combined,
    Evaluation,
    HostService,
    Inboxes,
    Part,
    Published,
    Reply,
    Store,
)

__all__ = [
    "CombineResult",
    "Combined",
    "Evaluation",
    "Host",
    "HostService",
    "HostSpec",
    "Inboxes",
    "Part",
    "Published",
    "Reply",
    "RunSpec",
    "Store",
    "TrainResult",
]
