"""The orchestrator LM's loss: cross-entropy on the tokens it decodes, over the ids the protocol allows.

Inference never samples freely: at every frame the protocol asks for an advance among the word-end
advances of ``<adv_lo>..<adv_hi>`` (the stall rule and the text in context set them,
streamchar/engine/frames.py) and then for a unit or ``<wait>``, and takes the argmax over exactly
those ids. So the loss at a predicted position is the cross-entropy of the softmax restricted to the allowed ids (``constrained``, the default): it trains
precisely the comparison decoding makes and spends nothing on pushing down ids that can never be
chosen there. With ``constrained = false`` it is the plain full-vocabulary cross-entropy (an ablation).
Every predicted position weighs the same; text, control tokens and padding carry no loss (they are
given to the LM, never decoded by it).

Metrics (all from the restricted argmax, i.e. what greedy decoding would pick under teacher forcing):
``adv_acc`` / ``unit_acc`` accuracy on advance / unit-or-wait positions, ``adv_mae`` the mean absolute
advance error in bytes, ``loss_adv`` / ``loss_unit`` the two halves of the loss.

Legend: B batch, N tokens, V vocabulary, P predicted positions of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamchar.models.vocab import StreamCharVocab
from training.pipelines.lm_data import LMBatch


@dataclass(frozen=True)
class LMObjectiveConfig:
    constrained: bool = True  # softmax over the protocol's allowed ids only (what constrained decoding compares)


def allowed_mask(lo: Tensor, hi: Tensor, gaps: Tensor, wait: Tensor, vocab_size: int, wait_id: int) -> Tensor:
    """lo, hi, gaps [P] long, wait [P] bool -> allowed ids [P,V] bool: lo..hi but the ids lo + k with bit k
    set in `gaps`, plus <wait> where `wait`."""
    ids = torch.arange(vocab_size, device=lo.device)  # [V]
    offset = ids[None, :] - lo[:, None]  # [P,V]
    in_range = (offset >= 0) & (ids <= hi[:, None])  # [P,V]
    gap = ((gaps[:, None] >> offset.clamp(0, 62)) & 1).bool()  # [P,V]
    return (in_range & ~gap) | (wait[:, None] & (ids == wait_id))


def lm_loss(model: nn.Module, batch: LMBatch, vocab: StreamCharVocab,
            config: LMObjectiveConfig = LMObjectiveConfig()) -> tuple[Tensor, dict[str, float]]:
    """Mean cross-entropy over the batch's predicted positions, and metrics (module docstring)."""
    logits = model(batch.input_ids[:, :-1])  # [B,N-1,V]: position i predicts token i + 1
    predicted = batch.loss_mask[:, 1:]  # [B,N-1]
    logits = logits[predicted].float()  # [P,V]
    target = batch.input_ids[:, 1:][predicted]  # [P]
    allowed = allowed_mask(batch.allowed_lo[:, 1:][predicted], batch.allowed_hi[:, 1:][predicted],
                           batch.allowed_gaps[:, 1:][predicted], batch.allow_wait[:, 1:][predicted],
                           logits.shape[-1], vocab.wait_id)  # [P,V]
    restricted = logits.masked_fill(~allowed, float("-inf"))  # [P,V]
    losses = F.cross_entropy(restricted if config.constrained else logits, target, reduction="none")  # [P]

    with torch.no_grad():
        choice = restricted.argmax(-1)  # [P]
        adv = vocab.adv_ids()
        is_adv = (target >= adv.start) & (target < adv.stop)  # [P]
        n_adv, n_unit = int(is_adv.sum()), int((~is_adv).sum())
        correct = choice == target
        metrics = {
            "loss_adv": float(losses[is_adv].sum()) / max(1, n_adv),
            "loss_unit": float(losses[~is_adv].sum()) / max(1, n_unit),
            "adv_acc": float(correct[is_adv].sum()) / max(1, n_adv),
            "unit_acc": float(correct[~is_adv].sum()) / max(1, n_unit),
            "adv_mae": float((choice[is_adv] - target[is_adv]).abs().sum()) / max(1, n_adv),
        }
    return losses.mean(), metrics
