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
from torch import Tensor

from tailored.train.two_tower.feed import equal_cells

__all__ = ["CHUNK_CELLS", "same_item_pairs", "sampled_softmax_loss", "shared_negatives_loss"]


def same_item_pairs(item_ids: Tensor) -> Tensor:
    """The off-diagonal cells (i, j) of a [B, B] logit matrix where column j holds the same
    item as row i (accidental hits), int64 [2, M]: from one sort of the B items, not a B x B
    comparison."""
    cells = equal_cells(item_ids, item_ids)
    return cells[:, cells[0] != cells[1]]


# the most logits one chunk of rows holds at once: a batch's [B, B + M] logits are never
# whole, so a batch of 65,536 costs memory linear in B (on a GPU, 1 GiB chunks of float32;
# on the CPU, chunks that stay near the caches)
CHUNK_CELLS = {"cuda": 1 << 28, "cpu": 1 << 22}


class _InBatchSoftmax(torch.autograd.Function):
    """sum_i a_i (logsumexp_j z_ij - z_ii) over z = u C^T / T + bias, with ``cells`` set to
    the lowest float, rows taken ``chunk`` at a time: the forward pass keeps each row's
    logsumexp, the backward pass recomputes a chunk's logits, turns them into the softmax in
    place, and multiplies it into both gradients. Memory: one chunk of logits."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        u: Tensor,
        cols: Tensor,
        bias: Tensor,
        a: Tensor,
        cells: Tensor,
        scale: float,
        chunk: int,
    ) -> Tensor:
        with torch.autocast(u.device.type, enabled=False):
            uf, cf = u.float(), cols.float()
            bounds = _chunk_bounds(cells[0], len(u), chunk)
            lse = torch.empty(len(u), device=u.device)
            diag = torch.empty(len(u), device=u.device)
            for r0, r1, c0, c1 in bounds:
                z = _chunk_logits(uf, cf, bias, cells, scale, r0, r1, c0, c1)
                lse[r0:r1] = torch.logsumexp(z, dim=1)
                diag[r0:r1] = z[
                    torch.arange(r1 - r0, device=u.device), torch.arange(r0, r1, device=u.device)
                ]
        ctx.save_for_backward(u, cols, bias, a, cells, lse)
        ctx.scale, ctx.bounds = scale, bounds  # type: ignore[attr-defined]
        return ((lse - diag) * a).sum()

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        u, cols, bias, a, cells, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        scale: float = ctx.scale  # type: ignore[attr-defined]
        with torch.autocast(u.device.type, enabled=False):
            uf, cf = u.float(), cols.float()
            coef = (a * grad).float()
            grad_u = torch.empty_like(uf)
            grad_c = torch.zeros_like(cf)
            for r0, r1, c0, c1 in ctx.bounds:  # type: ignore[attr-defined]
                p = _chunk_logits(uf, cf, bias, cells, scale, r0, r1, c0, c1)
                p.sub_(lse[r0:r1].unsqueeze(1)).exp_()  # the softmax, in place
                rows = torch.arange(r1 - r0, device=u.device)
                p[rows, rows + r0] -= 1.0
                p.mul_((coef[r0:r1] * scale).unsqueeze(1))
                torch.mm(p, cf, out=grad_u[r0:r1])
                grad_c.addmm_(p.T, uf[r0:r1])
        return grad_u.to(u.dtype), grad_c.to(cols.dtype), None, None, None, None, None


def _chunk_bounds(cell_rows: Tensor, n: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """Row chunks [r0, r1) of at most ``chunk`` rows, each with the range [c0, c1) of the
    (row-sorted) masked cells that fall in it; one host sync for all of them."""
    starts = list(range(0, n, chunk))
    edges = torch.searchsorted(
        cell_rows, torch.tensor([*starts, n], device=cell_rows.device)
    ).tolist()
    return [(r0, min(r0 + chunk, n), edges[k], edges[k + 1]) for k, r0 in enumerate(starts)]


def _chunk_logits(
    u: Tensor,
    cols: Tensor,
    bias: Tensor,
    cells: Tensor,
    scale: float,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
) -> Tensor:
    z = torch.addmm(bias.unsqueeze(0), u[r0:r1], cols.T, alpha=scale)
    if c1 > c0:
        low = torch.tensor(torch.finfo(z.dtype).min, device=z.device)
        z.index_put_((cells[0, c0:c1] - r0, cells[1, c0:c1]), low)
    return z


def sampled_softmax_loss(
    user: Tensor,
    item: Tensor,
    item_ids: Tensor,
    *,
    temperature: float,
    log_q: Tensor | None = None,
    offset: Tensor | None = None,
    mask_accidental_hits: bool = True,
    extra: Tensor | None = None,
    extra_ids: Tensor | None = None,
    n_items: int = 0,
    weight: Tensor | None = None,
    not_negatives: Tensor | None = None,
    chunk_cells: int = 0,
) -> Tensor:
    """Mean (or ``weight``-weighted mean) cross-entropy of each row's positive.

    ``user``, ``item``: float [B, D]; ``item_ids``: int64 [B]; ``log_q``: float [N+1] log of
    each item's in-batch sampling probability (None: no correction); ``offset``: float [N+1]
    added to every logit of each item (column), in log units (None: none); ``extra`` [M, D] with
    ``extra_ids`` [M]: uniformly sampled negatives from ``n_items`` items.
    ``not_negatives`` int64 [2, K]: (row, column) cells whose column item is another positive
    of row i's user (it is not a negative for that user; the diagonal is never masked).

    The logits are computed a chunk of rows at a time (at most ``chunk_cells`` of them, 0:
    :data:`CHUNK_CELLS` for the device) in one ``addmm`` each, the correction as its bias,
    and masked in place at the few cells concerned, which are found by sorting rather than by
    a B x B comparison: a batch of 8,192 costs its matrix products and the softmax, and memory
    for one chunk.
    """
    batch = item_ids.shape[0]
    cols, col_ids = item, item_ids
    bias = torch.zeros(batch, device=user.device)
    if log_q is not None:
        bias = -(log_q[item_ids].float() + math.log(batch))
    cells = [torch.zeros((2, 0), dtype=torch.long, device=user.device)]
    if mask_accidental_hits:
        cells.append(same_item_pairs(item_ids))
        if not_negatives is not None:
            off = not_negatives[0] != not_negatives[1]  # a row's own positive stays
            cells.append(not_negatives[:, off])
    if extra is not None and extra_ids is not None:
        cols = torch.cat([item, extra.to(item.dtype)])
        col_ids = torch.cat([item_ids, extra_ids])
        extra_bias = -math.log(extra.shape[0] / max(n_items, 1)) if log_q is not None else 0.0
        bias = torch.cat([bias, torch.full((len(extra_ids),), extra_bias, device=user.device)])
        if mask_accidental_hits:
            hits = equal_cells(item_ids, extra_ids)
            cells.append(torch.stack([hits[0], hits[1] + batch]))
    if offset is not None:
        bias = bias + offset[col_ids].to(bias.dtype)
    masked = torch.cat(cells, dim=1)
    masked = masked[:, torch.argsort(masked[0])]
    w = torch.ones(batch, device=user.device) if weight is None else weight.float()
    a = w / w.sum().clamp_min(1e-12)
    budget = chunk_cells or CHUNK_CELLS.get(user.device.type, CHUNK_CELLS["cpu"])
    chunk = max(1, min(batch, budget // max(1, len(col_ids))))
    loss = _InBatchSoftmax.apply(user, cols, bias, a, masked, 1.0 / temperature, chunk)
    assert isinstance(loss, Tensor)
    return loss


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
