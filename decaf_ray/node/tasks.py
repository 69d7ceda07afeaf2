"""What a node learns and how it is scored: one class per task, over a shared base model.

A task gives the loss of a batch (mean over the batch, for the sequential path; one mean per
node, for the batched path: their sum is the group loss) and the evaluation of a model on
held-out data. Batches are dicts of tensors (:mod:`decaf_ray.node.state`).

- :class:`Classify`: a classification head on an encoder or decoder; cross-entropy per text;
  evaluation: loss, accuracy and macro-F1 (scikit-learn's definition).
- :class:`ImageClassify`: the same on images, with a head or CLIP's zero-shot head.
- :class:`CausalLM`: next-token training of a decoder on prompt + response, the loss masked
  to the response tokens (``loss_mask``). Evaluation: token-mean loss and perplexity over the
  responses; for labelled data, where each response is one of the class names (``choices``),
  also accuracy and macro-F1 by comparing the class names' log-likelihoods given the prompt
  (no generation), which is how the paper's BoolQ/WiC F1 is scored.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from decaf_ray.node.state import Batch, set_mode, take_rows

TASKS = ("classify", "causal_lm", "image_classify")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over all classes of per-class F1, 2 tp / (2 tp + fp + fn), a class with
    no true and no predicted row counting 0: scikit-learn's ``f1_score(average="macro",
    zero_division=0)`` over ``labels=range(num_classes)`` (tests compare the two).

    From one bincount confusion matrix: scikit-learn's input checks cost about 6 ms a call,
    most of an evaluation of a small model at thousands of nodes."""
    C = num_classes
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    cm = np.bincount(y_true * C + y_pred, minlength=C * C).reshape(C, C)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (tp + fp) + (tp + fn)
    f1 = np.divide(2 * tp, denom, out=np.zeros(C), where=denom > 0)
    return float(f1.mean())


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


class Task(ABC):
    name = "task"

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean loss of a batch (a scalar with a gradient)."""

    @abstractmethod
    def node_losses(self, model: nn.Module, batch: Batch, k: int) -> torch.Tensor:
        """(k,) each node's mean loss over its own rows (rows node-major, equal blocks)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Batch, batch_size: int) -> dict[str, float]:
        """Held-out metrics of the model now installed, named as logged (without eval_)."""


class Classify(Task):
    name = "classify"

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """(b, C) class scores of a batch."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"])

    def node_losses(self, model: nn.Module, batch: Batch, k: int) -> torch.Tensor:
        per_row = F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="none")
        return per_row.view(k, -1).mean(dim=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Batch, batch_size: int) -> dict[str, float]:
        set_mode(model, training=False)
        n = len(data["labels"])
        loss_sum, preds = 0.0, []
        for idx in _chunks(n, batch_size):
            batch = take_rows(data, idx.to(data["labels"].device))
            logits = self.logits(model, batch)
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            preds.append(logits.argmax(-1).cpu())
        y_pred, y_true = torch.cat(preds).numpy(), data["labels"].cpu().numpy()
        return {
            "loss": loss_sum / n,
            "acc": float((y_pred == y_true).mean()),
            "f1": macro_f1(y_true, y_pred, self.num_labels),
        }


class ImageClassify(Classify):
    """Classification of images (``pixels``, uint8): a vision backbone with a head, or CLIP's
    zero-shot head, whose logits are the scaled cosine similarities of the image embedding
    with the embeddings of one prompt per class ("a photo of a {class}."), as in CLIP-LoRA:
    the text tower (and its LoRA) runs on the C prompts with every batch."""

    name = "image_classify"

    def __init__(self, num_labels: int, view, class_text: Sequence[Sequence[int]] = ()) -> None:
        super().__init__(num_labels)
        self.view = view  # decaf_ray.node.vision.ImageView
        self.class_text = [list(c) for c in class_text]  # CLIP: token ids of each prompt
        self._text: dict[str, torch.Tensor] = {}

    def _prompts(self, device: torch.device) -> dict[str, torch.Tensor]:
        if not self._text or self._text["input_ids"].device != device:
            width = max(len(c) for c in self.class_text)
            ids = torch.zeros((len(self.class_text), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for c, row in enumerate(self.class_text):
                ids[c, : len(row)], mask[c, : len(row)] = torch.tensor(row), 1
            self._text = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        return self._text

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x = self.view(batch["pixels"])
        kwargs = {"interpolate_pos_encoding": True} if self.view.interpolate else {}
        if self.class_text:
            out = model(pixel_values=x, **self._prompts(x.device), **kwargs)
            return out.logits_per_image
        return model(pixel_values=x, **kwargs).logits


def _cache_argument(model: nn.Module) -> str:
    """The forward argument taking a key/value cache (``cache`` from transformers 5.x on,
    ``past_key_values`` before)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _token_nll(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed negative log-likelihood of the tokens marked in ``loss_mask`` (the
    response), and their count. Row j's token t is predicted from its tokens < t."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["input_ids"][:, 1:]  # (b, L-1)
    mask = batch["loss_mask"][:, 1:].to(logits.dtype)  # (b, L-1)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(dim=1), mask.sum(dim=1)


class CausalLM(Task):
    name = "causal_lm"

    def __init__(self, choices: Sequence[Sequence[int]] = (), pad_id: int = 0) -> None:
        self.choices = [list(c) for c in choices]  # token ids of each class name's answer
        self.pad_id = pad_id

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        nll, count = _token_nll(model, batch)
        return nll.sum() / count.sum().clamp(min=1)

    def node_losses(self, model: nn.Module, batch: Batch, k: int) -> torch.Tensor:
        nll, count = _token_nll(model, batch)
        return nll.view(k, -1).sum(dim=1) / count.view(k, -1).sum(dim=1).clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Batch, batch_size: int) -> dict[str, float]:
        set_mode(model, training=False)
        if self.choices:
            return self._evaluate_choices(model, data, batch_size)
        n = len(data["labels"])
        nll_sum, tokens = 0.0, 0.0
        for idx in _chunks(n, batch_size):
            nll, count = _token_nll(model, take_rows(data, idx.to(data["labels"].device)))
            nll_sum, tokens = nll_sum + float(nll.sum()), tokens + float(count.sum())
        loss = nll_sum / max(tokens, 1.0)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}

    def _evaluate_choices(self, model: nn.Module, data: Batch, batch_size: int) -> dict[str, float]:
        """Score every class name after each prompt; predict the most likely one.

        The prompts run once (left-padded, keeping only the last position's logits, which
        predict each choice's first token) and their key/value cache is repeated for the C
        choices, which then run as short continuations: about C times cheaper than running
        prompt + choice C times, and (rows, Lc, vocab) logits, never (rows, L, vocab).
        """
        device = data["labels"].device
        C, n = len(self.choices), len(data["labels"])
        width_c = max(len(c) for c in self.choices)
        choice_ids = torch.full((C, width_c), self.pad_id, dtype=torch.long, device=device)
        choice_mask = torch.zeros_like(choice_ids)
        for c, ids in enumerate(self.choices):
            choice_ids[c, : len(ids)] = torch.tensor(ids, device=device)
            choice_mask[c, : len(ids)] = 1
        scores, nll_sum, tokens = [], 0.0, 0.0
        for idx in _chunks(n, max(1, batch_size // C)):
            b = len(idx)
            lens = [int(data["prompt_len"][i]) for i in idx.tolist()]
            width = max(lens)
            ids = torch.full((b, width), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(idx.tolist()):
                ids[r, width - lens[r] :] = data["input_ids"][i, : lens[r]]
                mask[r, width - lens[r] :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            first = out.logits[:, -1].float().log_softmax(dim=-1)  # (b, V): choice token 0
            cache = out.past_key_values
            cache.batch_repeat_interleave(C)  # row r*C + c continues prompt r with choice c
            cont_ids = choice_ids.repeat(b, 1)  # (b C, Lc)
            cont_mask = torch.cat([mask.repeat_interleave(C, dim=0), choice_mask.repeat(b, 1)], 1)
            cont_pos = (
                positions[:, -1:].repeat_interleave(C, dim=0)
                + 1
                + torch.arange(width_c, device=device)
            )
            later = (
                model(
                    input_ids=cont_ids,
                    attention_mask=cont_mask,
                    position_ids=cont_pos,
                    **{_cache_argument(model): cache},
                )
                .logits.float()
                .log_softmax(dim=-1)
            )  # (b C, Lc, V): [:, j] predicts token j + 1
            head = first.repeat_interleave(C, dim=0).gather(1, cont_ids[:, :1]).squeeze(1)
            rest = later[:, :-1].gather(-1, cont_ids[:, 1:, None]).squeeze(-1)  # (b C, Lc - 1)
            loglik = head + (rest * choice_mask.repeat(b, 1)[:, 1:]).sum(dim=1)
            loglik = loglik.view(b, C)
            scores.append(loglik.cpu())
            truth = data["labels"][idx.to(device)]
            nll_sum -= float(loglik.gather(1, truth[:, None]).sum())
            tokens += float(choice_mask.sum(dim=1)[truth].sum())
        score = torch.cat(scores)  # (n, C)
        y_pred, y_true = score.argmax(dim=1).numpy(), data["labels"].cpu().numpy()
        loss = nll_sum / max(tokens, 1.0)
        return {
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)),
            "acc": float((y_pred == y_true).mean()),
            "f1": macro_f1(y_true, y_pred, C),
        }


def make_task(name: str, num_labels: int, choices=(), pad_id: int = 0, view=None) -> Task:
    """The task ``name``; ``choices`` are token ids per class (causal_lm: each class name's
    answer; image_classify with CLIP: each class's prompt), ``view`` an image task's input."""
    if name == "classify":
        return Classify(num_labels)
    if name == "causal_lm":
        return CausalLM(choices, pad_id)
    if name == "image_classify":
        return ImageClassify(num_labels, view, choices)
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
