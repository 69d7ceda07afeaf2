"""A node's optimizer: AdamW, its learning-rate schedule, and the one place that knows how
torch keeps AdamW's per-parameter state.

torch.optim.AdamW keeps, for each parameter p, ``state[p] = {"step": tensor, "exp_avg": m,
"exp_avg_sq": v}`` (the layout of ``torch.optim.Adam._init_group``, not fused, not
capturable). The sequential path lets torch update it; the batched path
(:mod:`decaf_ray.node.batched`) stacks the moments of k nodes, steps them with
:func:`adamw_step`, and writes them back. Only this module reads or writes those keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from decaf_ray.config import TrainConfig


def learning_rate(train: TrainConfig, round_idx: int) -> float:
    """lr for round ``round_idx`` (1-based): constant, or cosine decay to 0 over the run."""
    if train.lr_schedule == "cosine":
        progress = (round_idx - 1) / max(1, train.rounds)
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.lr


def make_optimizer(params: Sequence[nn.Parameter], train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` with its state made now (see :func:`init_moments`)."""
    opt = torch.optim.AdamW(list(params), lr=train.lr, weight_decay=train.weight_decay)
    init_moments(opt)
    return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def init_moments(opt: torch.optim.AdamW, params: Sequence[nn.Parameter] | None = None) -> None:
    """Give ``params`` (default: all of ``opt``'s) fresh AdamW state: step 0, zero moments.

    This is the state AdamW would create lazily at its first step, made up front (or zeroed
    in place, for a reset). Lazily, a node's first step allocates its moments between the
    activations of that step, and the heap holes they pin cost about 4 MB per node; made at
    set-up, the moments of all nodes sit together (measured: 5.0 -> 1-2 MiB per node).
    """
    wanted = {id(p) for p in params} if params is not None else None
    for group in opt.param_groups:
        for p in group["params"]:
            if wanted is not None and id(p) not in wanted:
                continue
            st = opt.state[p]
            if st:
                st["step"].zero_()
                st["exp_avg"].zero_()
                st["exp_avg_sq"].zero_()
            else:
                st["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def stack_moments(
    pairs: Sequence[tuple[torch.optim.AdamW, nn.Parameter]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exp_avg (k, ...), exp_avg_sq (k, ...), steps (k,)) of one parameter over k nodes,
    each given as (its optimizer, its parameter)."""
    states = [opt.state[p] for opt, p in pairs]
    return (
        torch.stack([st["exp_avg"] for st in states]),
        torch.stack([st["exp_avg_sq"] for st in states]),
        torch.tensor([float(st["step"]) for st in states], device=device),
    )


def write_moments(
    opt: torch.optim.AdamW,
    p: nn.Parameter,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: float,
) -> None:
    """Copy one node's slice of stacked moments back into its optimizer's state of ``p``."""
    st = opt.state[p]
    st["step"].fill_(float(step))
    st["exp_avg"].copy_(exp_avg)
    st["exp_avg_sq"].copy_(exp_avg_sq)


def view_moments(
    opt: torch.optim.AdamW,
    p: nn.Parameter,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
) -> None:
    """Make ``p``'s AdamW state these tensors (views of stacked moments, updated in place
    from then on: see :class:`~decaf_ray.node.batched.Resident`)."""
    st = opt.state[p]
    st["step"], st["exp_avg"], st["exp_avg_sq"] = step, exp_avg, exp_avg_sq


def moments(opt: torch.optim.AdamW, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Copies of the AdamW state of the named parameters, for a checkpoint:
    ``<name>.exp_avg``, ``<name>.exp_avg_sq`` and ``<name>.step`` (a 0-d tensor)."""
    out = {}
    for name, p in params.items():
        st = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            out[f"{name}.{key}"] = st[key].detach().to("cpu", copy=True)
    return out


def load_moments(
    opt: torch.optim.AdamW, params: dict[str, nn.Parameter], saved: dict[str, torch.Tensor]
) -> None:
    """Put state saved by :func:`moments` back into ``opt`` (in place: the tensors stay)."""
    for name, p in params.items():
        st = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            st[key].copy_(saved[f"{name}.{key}"])


def hyper(opt: torch.optim.AdamW) -> dict[str, float | tuple[float, float]]:
    """The (single) param group's AdamW settings, as :func:`adamw_step` takes them."""
    group = opt.param_groups[0]
    return {"betas": group["betas"], "eps": group["eps"], "weight_decay": group["weight_decay"]}


@torch.no_grad()
def adamw_step(
    params: torch.Tensor,
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    steps: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step on stacked (k, ...) tensors, in place; ``steps`` (k,) per node.

    The same arithmetic as torch.optim.AdamW's single-tensor path, per row block:
    p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    beta1, beta2 = betas
    steps += 1
    shape = (-1,) + (1,) * (params.dim() - 1)
    bc1 = (1 - beta1 ** steps.to(torch.float64)).to(params.dtype).reshape(shape)
    bc2_sqrt = (1 - beta2 ** steps.to(torch.float64)).sqrt().to(params.dtype).reshape(shape)
    if weight_decay:
        params.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grads, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    params.sub_(lr * exp_avg / (bc1 * denom))


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
