"""Sampled softmax with in-batch (and optionally uniform) negatives and logQ correction.

For a batch of (user, positive item) pairs with embeddings ``u`` [B, D] and ``v`` [B, D],
the logits are ``s_ij = <u_i, v_j> / T - log q_j``: every other positive in the batch is a
negative for row i, and since popular items appear as in-batch negatives more often, their
logit is lowered by the log of their sampling probability ``q_j`` (Yi et al., "Sampling-bias-
corrected neural modeling for large corpus item recommendations", RecSys 2019). Columns
holding the same item as row i's positive (accidental hits) are removed, and so, optionally,
are columns holding any other positive of row i's user: an item the user engages with later
is not a negative for them. Extra uniformly
sampled items (mixed negative sampling, Yang et al. 2020) append ``M`` columns with
``log q = log(M / N)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sampled_softmax_loss", "shared_negatives_loss"]


def sampled_softmax_loss(
    user: Tensor,
    item: Tensor,
    item_ids: Tensor,
    *,
    temperature: float,
    log_q: Tensor | None = None,
    mask_accidental_hits: bool = True,
    extra: Tensor | None = None,
    extra_ids: Tensor | None = None,
    n_items: int = 0,
    weight: Tensor | None = None,
    positive_mask: Tensor | None = None,
) -> Tensor:
    """Mean (or ``weight``-weighted mean) cross-entropy of each row's positive.

    ``user``, ``item``: float [B, D]; ``item_ids``: int64 [B]; ``log_q``: float [N+1] log of
    each item's in-batch sampling probability (None: no correction); ``extra`` [M, D] with
    ``extra_ids`` [M]: uniformly sampled negatives from ``n_items`` items.
    ``positive_mask`` bool [B, B]: True where column j's item is another positive of row i's
    user (it is not a negative for that user; its diagonal is ignored).
    """
    logits = user @ item.T / temperature  # [B, B]
    if log_q is not None:
        batch = item_ids.shape[0]
        logits = logits - (log_q[item_ids] + math.log(batch)).unsqueeze(0)
    if mask_accidental_hits:
        same = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
        if positive_mask is not None:
            same = same | positive_mask
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    if extra is not None and extra_ids is not None:
        ext = user @ extra.T / temperature  # [B, M]
        if log_q is not None:
            ext = ext - math.log(extra.shape[0] / max(n_items, 1))
        if mask_accidental_hits:
            ext = ext.masked_fill(
                extra_ids.unsqueeze(0) == item_ids.unsqueeze(1), torch.finfo(ext.dtype).min
            )
        logits = torch.cat([logits, ext], dim=1)
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def shared_negatives_loss(
    user: Tensor,
    item: Tensor,
    item_ids: Tensor,
    negatives: Tensor,
    negative_ids: Tensor,
    *,
    temperature: float,
    n_items: int,
    weight: Tensor,
) -> Tensor:
    """``weight``-weighted mean cross-entropy of each row's positive against ``M`` negatives
    shared by every row, drawn uniformly from the ``n_items`` items: what differentially
    private training uses (tailored.train.two_tower.private), since no row's loss then reads
    another user's items. The uniform proposal's ``log(M / N)`` is its only correction: it is
    the same for every item and depends on no user's data (logQ from popularity would).

    ``user``, ``item``: float [R, D]; ``item_ids``: int64 [R]; ``negatives`` [M, D] with
    ``negative_ids`` int64 [M]; ``weight`` float [R] (0 for padding rows). A negative that is
    the row's own positive (an accidental hit) is masked.
    """
    pos = (user * item).sum(-1, keepdim=True) / temperature  # [R, 1]
    neg = user @ negatives.T / temperature - math.log(negatives.shape[0] / max(n_items, 1))
    neg = neg.masked_fill(
        negative_ids.unsqueeze(0) == item_ids.unsqueeze(1), torch.finfo(neg.dtype).min
    )
    logits = torch.cat([pos, neg], dim=1).float()
    loss = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)
