"""The global updates merged into a host's shared base model (FLoRA), and how to undo them.

A host holds one frozen base model for all its nodes, so a method that merges its server's
update into the base (``Algorithm.merges``) merges once per round on each host, not once per
node. For every adapted layer, with the round's server factors B (d, R) and A (R, k):

    D <- D + scaling * B A       (float64 product on the CPU, rounded to float32; D float32)
    W <- W_0 + D                 (in the layer's shape and dtype)

where W_0 is the pretrained weight (kept at the first merge), D the sum of the rounds'
updates, and a convolution's (out, in kh kw) update is reshaped to its kernel (GPT-2's Conv1D,
which stores (in, out), takes it transposed). Every host receives the same B and A and runs
these same operations in the same order, so every host's base stays bit-identical (tested with
two hosts over three rounds); hosts on different kinds of CPU could round a float64 sum apart
in the last bit of a rare entry, which float32 then almost always hides.

D is host state, not node state: a checkpoint saves it once (from host 0) and restores it on
every host (:meth:`snapshot`, :meth:`restore`). :meth:`reset` puts W_0 back, so a warm host
that ran FLoRA serves the next run with the pretrained weights. :meth:`widened` writes D as
exact LoRA factors (B = D / scaling, A = I), so a saved adapter rebuilds the merged model on
the pretrained base.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from decaf_ray.algorithms import Adapter


class MergedBase:
    """The merged update D of each adapted layer of ``model``, and the last round merged."""

    def __init__(self, model: nn.Module) -> None:
        from peft.tuners.lora import LoraLayer

        self._layers = {
            name.removeprefix("base_model.model."): module
            for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and "default" in module.lora_A
        }
        self._pristine: dict[str, torch.Tensor] = {}  # W_0 of each merged layer
        self.delta: dict[str, torch.Tensor] = {}  # D: float32, in the weight's shape
        self.round_idx = 0  # the last round merged (0: none)

    def merge(self, round_idx: int, update: Adapter) -> bool:
        """Add round ``round_idx``'s update (the server's factors) unless that round is
        merged already; True if it was added now."""
        if round_idx <= self.round_idx:
            return False
        for m, layer in self._layers.items():
            weight = layer.get_base_layer().weight
            B = torch.from_numpy(np.asarray(update.B[m], dtype=np.float64))  # (d, R)
            A = torch.from_numpy(np.asarray(update.A[m], dtype=np.float64))  # (R, k)
            U = (layer.scaling["default"] * (B @ A)).float()  # (d, k)
            if getattr(layer, "fan_in_fan_out", False):  # Conv1D stores its weight (k, d)
                U = U.T
            U = U.reshape(weight.shape).to(weight.device)
            self.delta[m] = self.delta[m] + U if m in self.delta else U
            self._apply(m)
        self.round_idx = round_idx
        return True

    def _apply(self, m: str) -> None:
        """W = W_0 + D for layer ``m``."""
        weight = self._layers[m].get_base_layer().weight
        with torch.no_grad():
            if m not in self._pristine:
                self._pristine[m] = weight.detach().clone()
            weight.copy_((self._pristine[m].float() + self.delta[m]).to(weight.dtype))

    def widened(self, adapter: Adapter) -> Adapter:
        """``adapter`` with the merged update in front, exactly: per module B' = [D / scaling,
        B] (d, k + r) and A' = [I_k; A] (k + r, k), so B' A' scaling = D + B A scaling on the
        pretrained base (modules of different k get different ranks: ``one_rank`` pads them).
        Unchanged if nothing is merged. (Its size is about two d x k matrices per module: the
        merged model is dense.)"""
        if not self.delta:
            return adapter
        A, B = {}, {}
        for m, layer in self._layers.items():
            D = self.delta[m].detach().cpu().double()
            D = D.T if getattr(layer, "fan_in_fan_out", False) else D.reshape(D.shape[0], -1)
            D = (D / layer.scaling["default"]).numpy()  # (d, k)
            A[m] = np.concatenate([np.eye(D.shape[1]), adapter.A[m]]).astype(np.float32)
            B[m] = np.concatenate([D, adapter.B[m]], axis=1).astype(np.float32)
        return Adapter(A=A, B=B, extra=adapter.extra)

    def reset(self) -> None:
        """Back to the pretrained weights; nothing merged."""
        with torch.no_grad():
            for m, w0 in self._pristine.items():
                self._layers[m].get_base_layer().weight.copy_(w0)
        self._pristine, self.delta, self.round_idx = {}, {}, 0

    def snapshot(self) -> dict[str, torch.Tensor]:
        """D of each merged layer and the round, as CPU tensors ({} when nothing is merged)."""
        if not self.delta:
            return {}
        out = {f"delta.{m}": d.detach().to("cpu", copy=True) for m, d in self.delta.items()}
        out["round"] = torch.tensor(self.round_idx, dtype=torch.int64)
        return out

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """The state of a :meth:`snapshot` (of this host or any other of the run)."""
        self.reset()
        for key, value in tensors.items():
            if key.startswith("delta."):
                m = key[len("delta.") :]
                weight = self._layers[m].get_base_layer().weight
                self.delta[m] = value.to(device=weight.device, dtype=torch.float32).clone()
                self._apply(m)
        self.round_idx = int(tensors["round"]) if tensors else 0
