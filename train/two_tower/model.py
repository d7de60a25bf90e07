"""The two towers, as plain ``nn.Module``s (no Lightning here: export and serving reuse them).

* :class:`ItemTower`: item id embedding (index 0 = unknown/new item) + metadata (categorical,
  multi-valued categorical, numeric) -> MLP -> L2-normalised ``[*, dim]``. An item with
  metadata but no id history (index 0 for its id) still gets an embedding from its metadata.
* :class:`UserTower`: hashed pseudonymous id (optional) + profile fields + request context +
  the user's most recent items, encoded by a sequence encoder over the item tower's input
  embeddings (shared parameters) -> MLP -> L2-normalised ``[B, dim]``.
* :class:`TwoTower`: both, and their tensors of item metadata as buffers.

:func:`tower_spec` reads the sizes off the data and :func:`build_model` builds the model a
``[model]`` configuration describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tailored.config import ModelConfig

if TYPE_CHECKING:
    from tailored.data.interactions import Interactions

__all__ = [
    "FeatureBlock",
    "ItemTower",
    "ItemTowers",
    "TowerSpec",
    "TwoTower",
    "UserTower",
    "UserTowers",
    "build_model",
    "tower_spec",
]


@dataclass(frozen=True)
class TowerSpec:
    """Sizes derived from the data: embedding cardinalities and feature counts."""

    n_items: int  # real items; indices 1..n_items, 0 is padding/unknown
    item_categorical: tuple[int, ...] = ()  # cardinality (incl. code 0) per field
    item_multi: tuple[int, ...] = ()
    item_numeric: int = 0
    user_categorical: tuple[int, ...] = ()
    user_numeric: int = 0
    context: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TowerSpec:
        def tup(key: str) -> tuple[int, ...]:
            return tuple(int(v) for v in obj.get(key, ()))

        return cls(
            n_items=int(obj["n_items"]),
            item_categorical=tup("item_categorical"),
            item_multi=tup("item_multi"),
            item_numeric=int(obj.get("item_numeric", 0)),
            user_categorical=tup("user_categorical"),
            user_numeric=int(obj.get("user_numeric", 0)),
            context=tup("context"),
        )


class FeatureBlock(nn.Module):
    """Embeds categorical codes [B, C], multi-valued codes [B, M, T] (mean of the non-zero
    codes) and numeric values [B, F] into one vector [B, out_dim]."""

    def __init__(
        self, categorical: tuple[int, ...], multi: tuple[int, ...], numeric: int, dim: int
    ) -> None:
        super().__init__()
        self.cat = nn.ModuleList(nn.Embedding(n, dim, padding_idx=0) for n in categorical)
        self.multi = nn.ModuleList(nn.Embedding(n, dim, padding_idx=0) for n in multi)
        self.numeric = nn.Linear(numeric, dim) if numeric else None
        self.out_dim = dim * (len(categorical) + len(multi) + (1 if numeric else 0))

    def forward(self, cat: Tensor, multi: Tensor, num: Tensor) -> Tensor:
        parts = [emb(cat[..., j]) for j, emb in enumerate(self.cat)]
        for j, emb in enumerate(self.multi):
            codes = multi[..., j, :]
            mask = (codes > 0).unsqueeze(-1).float()
            parts.append((emb(codes) * mask).sum(-2) / mask.sum(-2).clamp_min(1.0))
        if self.numeric is not None:
            parts.append(self.numeric(num))
        if not parts:
            return cat.new_zeros((*cat.shape[:-1], 0), dtype=torch.float32)
        return torch.cat(parts, dim=-1)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
    )


class ItemTower(nn.Module):
    """Item index [*] (int64, 1-based; 0 = unknown) -> embedding [*, dim], L2-normalised.

    Metadata is looked up from buffers (``cat`` [N+1, C], ``multi`` [N+1, M, T], ``num``
    [N+1, F]) registered by :class:`TwoTower`; :meth:`embed_features` takes it explicitly,
    for items that arrived after training.
    """

    def __init__(
        self,
        spec: TowerSpec,
        *,
        id_dim: int,
        feature_dim: int,
        hidden: int,
        dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.input_dim = id_dim  # width of inputs(): what histories are made of
        self.out_dim = dim
        self.id_embedding = nn.Embedding(spec.n_items + 1, id_dim, padding_idx=0)
        self.features = FeatureBlock(
            spec.item_categorical, spec.item_multi, spec.item_numeric, feature_dim
        )
        self.input_proj = nn.Linear(id_dim + self.features.out_dim, id_dim)
        self.mlp = _mlp(id_dim, hidden, dim, dropout)
        # item indices read as 0 (a new item) while training; see treat_as_new
        self.as_new: Tensor
        self.register_buffer("as_new", torch.zeros(spec.n_items + 1, dtype=torch.bool), False)
        self._any_as_new = False

    def treat_as_new(self, rows: Tensor) -> None:
        """Read the item indices where ``rows`` (bool [N + 1]) is true as 0, the new-item
        index, from now on (training: validation then sees what :meth:`reset_ids` bakes in)."""
        self.as_new.copy_(rows.to(self.as_new.device))
        self.as_new[0] = False
        self._any_as_new = bool(self.as_new.any())

    def inputs(self, ids: Tensor, cat: Tensor, multi: Tensor, num: Tensor) -> Tensor:
        """The tower's input representation [*, id_dim] (also what histories are made of)."""
        if self._any_as_new:
            ids = ids.masked_fill(self.as_new[ids], 0)
        x = torch.cat([self.id_embedding(ids), self.features(cat, multi, num)], dim=-1)
        return self.input_proj(x)

    def output(self, x: Tensor) -> Tensor:
        """Tower inputs [*, id_dim] -> embedding [*, dim], L2-normalised."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, ids: Tensor, cat: Tensor, multi: Tensor, num: Tensor) -> Tensor:
        return self.output(self.inputs(ids, cat, multi, num))

    @torch.no_grad()
    def reset_ids(self, untrained: Tensor) -> int:
        """Set the id vectors of the item indices where ``untrained`` (bool [N + 1]) is true
        to the new-item vector (row 0); returns how many rows changed."""
        rows = torch.nonzero(untrained[1:]).squeeze(1) + 1
        self.id_embedding.weight[rows] = self.id_embedding.weight[0].clone()
        return int(rows.numel())


class _SequenceEncoder(nn.Module):
    """History [B, L, D] with padding mask [B, L] (True = real item; the most recent item is
    last) -> [B, D].

    ``causal``: the encoder reads the window from its oldest item on, never the padding, and
    position ``t`` sees items ``0..t`` only, so :meth:`forward_all` encodes every prefix of a
    sequence in one pass and the encoding of a history of ``n`` items does not depend on how
    much padding surrounds it (training on every position and serving then agree exactly).
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        length: int,
        layers: int,
        heads: int,
        dropout: float,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.causal = causal
        if kind == "transformer":
            self.position = nn.Embedding(length, dim)
            layer = nn.TransformerEncoderLayer(
                dim, heads, dim * 2, dropout, batch_first=True, norm_first=True, activation="gelu"
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
        elif kind == "gru":
            self.gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        if self.causal:
            return self._last_of_prefix(h, mask)
        any_item = mask.any(dim=1, keepdim=True)
        if self.kind == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.kind == "gru":
            # (not Opacus's DPGRU, whose per-user gradients cannot take data-dependent shapes)
            if self.training and type(self.gru) is nn.GRU:
                return self._gru_packed(h, mask)
            out, _ = self.gru(h * mask.unsqueeze(-1).to(h.dtype))
            return out[:, -1] * any_item.to(h.dtype)
        length = h.shape[1]
        pos = torch.arange(length, device=h.device)
        x = h + self.position(pos).unsqueeze(0)
        # a row with no history attends to its last (padding) slot so softmax stays finite
        attend = mask.clone()
        attend[:, -1] = True
        x = self.encoder(x, src_key_padding_mask=~attend)
        return self.norm(x[:, -1]) * any_item.to(h.dtype)

    def _gru_packed(self, h: Tensor, mask: Tensor) -> Tensor:
        """The padded GRU's result, computed over each row's real items only (training, where
        histories are right-aligned and most are far shorter than the window).

        The padded GRU reads a row of ``n`` items as ``L - n`` zero inputs and then the items.
        From the zero state, zero inputs lead every row through the same states ``s_k`` (the
        biases move it), so the row's result is the GRU over its ``n`` items from ``s_{L-n}``:
        one packed pass over the real items, whatever the window's length."""
        rows, length, _ = h.shape
        n = mask.sum(1)
        trajectory, _ = self.gru(h.new_zeros(1, length, h.shape[2]))  # s_1 .. s_L
        states = torch.cat([trajectory.new_zeros(1, trajectory.shape[2]), trajectory[0]])
        out = h.new_zeros(rows, states.shape[1])
        real = torch.nonzero(n > 0).squeeze(1)
        if not len(real):
            return out
        count = n[real]
        steps = torch.arange(length, device=h.device).unsqueeze(0)
        # left-align each row's real items (the last ``count`` of its window)
        idx = (steps + length - count.unsqueeze(1)) % length
        aligned = h[real].gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[2]))
        packed = nn.utils.rnn.pack_padded_sequence(
            aligned, count.cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.gru(packed, states[length - count].unsqueeze(0).contiguous())
        return out.index_copy(0, real, last[0])

    def forward_all(self, h: Tensor, mask: Tensor) -> Tensor:
        """Left-aligned sequences [B, L, D] (``mask`` [B, L] True on a prefix: the oldest item
        first, padding after) -> [B, L, D], row ``t`` the encoding of items ``0..t`` (rows
        past the prefix are finite but meaningless). Causal encoders only."""
        m = mask.unsqueeze(-1).to(h.dtype)
        if self.kind == "mean":
            return torch.cumsum(h * m, 1) / torch.cumsum(m, 1).clamp_min(1.0)
        if self.kind == "gru":
            out, _ = self.gru(h * m)
            return out
        length = h.shape[1]
        pos = torch.arange(length, device=h.device)
        x = h + self.position(pos).unsqueeze(0)
        # padding only ever follows the real items, so the causal mask alone keeps it out
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=h.device)
        return self.norm(self.encoder(x, mask=causal.to(h.dtype), is_causal=True))

    def _last_of_prefix(self, h: Tensor, mask: Tensor) -> Tensor:
        """Left-padded history -> left-aligned (a per-row rotation: plain gathers, so it
        exports) -> :meth:`forward_all` -> the row of the most recent item."""
        length = h.shape[1]
        n = mask.sum(1, keepdim=True)  # [B, 1]
        steps = torch.arange(length, device=h.device).unsqueeze(0)
        idx = (steps + length - n) % length  # [B, L]
        aligned = h.gather(1, idx.unsqueeze(-1).expand_as(h))
        out = self.forward_all(aligned, steps < n)
        last = (n - 1).clamp_min(0).unsqueeze(-1).expand(-1, 1, out.shape[-1])
        return out.gather(1, last).squeeze(1) * (n > 0).to(h.dtype)


class UserTower(nn.Module):
    """User inputs -> embedding [B, dim], L2-normalised.

    Inputs: ``user_hash`` int64 [B] (hashed id bucket, 0 = none), ``user_cat`` [B, C],
    ``user_num`` [B, F], ``context`` [B, K] (codes, 0 = unknown), and the history's item
    representations [B, L, id_dim] with their mask [B, L].
    """

    def __init__(
        self,
        spec: TowerSpec,
        *,
        id_buckets: int,
        id_dim: int,
        feature_dim: int,
        hidden: int,
        dim: int,
        dropout: float,
        encoder: str,
        history_length: int,
        layers: int,
        heads: int,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.out_dim = dim
        self.id_embedding = (
            nn.Embedding(id_buckets + 1, feature_dim, padding_idx=0) if id_buckets else None
        )
        self.profile = FeatureBlock(spec.user_categorical, (), spec.user_numeric, feature_dim)
        self.context = FeatureBlock(spec.context, (), 0, feature_dim)
        self.sequence = _SequenceEncoder(
            encoder, id_dim, history_length, layers, heads, dropout, causal
        )
        d_in = id_dim + self.profile.out_dim + self.context.out_dim
        d_in += feature_dim if id_buckets else 0
        self.mlp = _mlp(d_in, hidden, dim, dropout)
        self.skip = nn.Linear(id_dim, dim, bias=False)

    @property
    def causal(self) -> bool:
        """Whether the history encoder reads causally (:meth:`forward_all` works)."""
        return self.sequence.causal

    def forward(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        history: Tensor,
        history_mask: Tensor,
    ) -> Tensor:
        seq = self.sequence(history, history_mask)
        return self._combine(seq, user_hash, user_cat, user_num, context)

    def forward_all(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        sequence: Tensor,
        sequence_mask: Tensor,
    ) -> Tensor:
        """Every prefix of left-aligned sequences at once (causal encoders): user inputs of
        [S] rows as in :meth:`forward` but ``context`` [S, L, K] per position, ``sequence``
        [S, L, id_dim] with ``sequence_mask`` [S, L] -> [S, L, dim], row ``t`` the embedding
        after items ``0..t``."""
        seq = self.sequence.forward_all(sequence, sequence_mask)  # [S, L, id_dim]
        s, length = sequence_mask.shape

        def rows(x: Tensor) -> Tensor:  # [S, ...] -> [S * L, ...], repeated per position
            return x.unsqueeze(1).expand(s, length, *x.shape[1:]).reshape(s * length, *x.shape[1:])

        out = self._combine(
            seq.reshape(s * length, -1),
            rows(user_hash),
            rows(user_cat),
            rows(user_num),
            context.reshape(s * length, -1),
        )
        return out.reshape(s, length, -1)

    def _combine(
        self, seq: Tensor, user_hash: Tensor, user_cat: Tensor, user_num: Tensor, context: Tensor
    ) -> Tensor:
        empty = user_num.new_zeros((user_cat.shape[0], 0, 0), dtype=torch.long)
        parts = [
            seq,
            self.profile(user_cat, empty, user_num),
            self.context(context, empty, user_num[:, :0]),
        ]
        if self.id_embedding is not None:
            parts.append(self.id_embedding(user_hash))
        x = torch.cat(parts, dim=-1)
        return F.normalize(self.mlp(x) + self.skip(seq), dim=-1)


class ItemTowers(nn.Module):
    """``[model] ensemble`` item towers side by side, used as one :class:`ItemTower`: the
    inputs are the members' inputs concatenated ([*, sum of id_dim]), the embedding their
    L2-normalised embeddings concatenated and divided by sqrt(members) ([*, sum of dim]),
    a unit vector again, whose inner product with a :class:`UserTowers` embedding is the
    members' scores averaged."""

    def __init__(self, members: list[ItemTower]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.input_dims = [m.input_dim for m in members]
        self.blocks = [m.out_dim for m in members]
        self.input_dim = sum(self.input_dims)
        self.out_dim = sum(self.blocks)
        self.scale = len(members) ** -0.5

    def towers(self) -> list[ItemTower]:
        """The members, typed."""
        return [m for m in self.members if isinstance(m, ItemTower)]

    def treat_as_new(self, rows: Tensor) -> None:
        for m in self.towers():
            m.treat_as_new(rows)

    def inputs(self, ids: Tensor, cat: Tensor, multi: Tensor, num: Tensor) -> Tensor:
        return torch.cat([m.inputs(ids, cat, multi, num) for m in self.towers()], dim=-1)

    def output(self, x: Tensor) -> Tensor:
        parts = x.split(self.input_dims, dim=-1)
        out = [m.output(p) for m, p in zip(self.towers(), parts, strict=True)]
        return torch.cat(out, dim=-1) * self.scale

    def forward(self, ids: Tensor, cat: Tensor, multi: Tensor, num: Tensor) -> Tensor:
        return self.output(self.inputs(ids, cat, multi, num))

    def reset_ids(self, untrained: Tensor) -> int:
        return max(m.reset_ids(untrained) for m in self.towers())


class UserTowers(nn.Module):
    """The user towers matching :class:`ItemTowers`, used as one :class:`UserTower`: each
    member reads its own slice of the history's item inputs; the embedding is theirs
    concatenated, divided by sqrt(members)."""

    def __init__(self, members: list[UserTower], input_dims: list[int]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.input_dims = input_dims
        self.blocks = [m.out_dim for m in members]
        self.out_dim = sum(self.blocks)
        self.scale = len(members) ** -0.5

    def towers(self) -> list[UserTower]:
        """The members, typed."""
        return [m for m in self.members if isinstance(m, UserTower)]

    @property
    def causal(self) -> bool:
        return all(m.causal for m in self.towers())

    def forward(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        history: Tensor,
        history_mask: Tensor,
    ) -> Tensor:
        return self._side_by_side(
            lambda m, h: m(user_hash, user_cat, user_num, context, h, history_mask), history
        )

    def forward_all(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        sequence: Tensor,
        sequence_mask: Tensor,
    ) -> Tensor:
        return self._side_by_side(
            lambda m, h: m.forward_all(user_hash, user_cat, user_num, context, h, sequence_mask),
            sequence,
        )

    def _side_by_side(self, run: Callable[[UserTower, Tensor], Tensor], items: Tensor) -> Tensor:
        """``run`` of each member on its own slice of the item inputs ``items`` [..., sum of
        id_dim], the outputs concatenated over sqrt(members)."""
        parts = items.split(self.input_dims, dim=-1)
        outs = [run(m, h) for m, h in zip(self.towers(), parts, strict=True)]
        return torch.cat(outs, dim=-1) * self.scale


class TwoTower(nn.Module):
    """Both towers and the item metadata they read (buffers, so they move with the model).

    ``item_cat`` int64 [N+1, C], ``item_multi`` int64 [N+1, M, T], ``item_num`` float32
    [N+1, F]; row 0 is the all-zero padding item.
    """

    item_cat: Tensor
    item_multi: Tensor
    item_num: Tensor

    def __init__(
        self,
        spec: TowerSpec,
        item_cat: Tensor,
        item_multi: Tensor,
        item_num: Tensor,
        *,
        dim: int = 64,
        id_dim: int = 64,
        feature_dim: int = 16,
        hidden: int = 256,
        dropout: float = 0.2,
        encoder: str = "transformer",
        history_length: int = 50,
        layers: int = 2,
        heads: int = 2,
        user_id_buckets: int = 0,
        causal_history: bool = False,
        ensemble: int = 1,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("item_cat", item_cat)
        self.register_buffer("item_multi", item_multi)
        self.register_buffer("item_num", item_num)
        items = [
            ItemTower(
                spec,
                id_dim=id_dim,
                feature_dim=feature_dim,
                hidden=hidden,
                dim=dim,
                dropout=dropout,
            )
            for _ in range(ensemble)
        ]
        users = [
            UserTower(
                spec,
                id_buckets=user_id_buckets,
                id_dim=id_dim,
                feature_dim=feature_dim,
                hidden=hidden,
                dim=dim,
                dropout=dropout,
                encoder=encoder,
                history_length=history_length,
                layers=layers,
                heads=heads,
                causal=causal_history,
            )
            for _ in range(ensemble)
        ]
        # one pair: the towers themselves (the weights' names as before ensembles existed)
        self.item_tower: ItemTower | ItemTowers = items[0] if ensemble == 1 else ItemTowers(items)
        self.user_tower: UserTower | UserTowers = (
            users[0] if ensemble == 1 else UserTowers(users, [id_dim] * ensemble)
        )
        # the embedding's blocks, one per pair of towers (each trained as a run of its own:
        # tailored.train.two_tower.fit)
        self.blocks = [dim] * ensemble

    def item_inputs(self, items: Tensor, id_dropout: float = 0.0) -> Tensor:
        """Items [*] (1-based) -> item tower inputs [*, id_dim]; with ``id_dropout`` some ids
        are hidden so the tower learns to embed from metadata alone."""
        ids = items
        if id_dropout > 0 and self.training:
            drop = torch.rand(items.shape, device=items.device) < id_dropout
            ids = items.masked_fill(drop, 0)
        return self.item_tower.inputs(
            ids, self.item_cat[items], self.item_multi[items], self.item_num[items]
        )

    def shared_item_inputs(self, *parts: tuple[Tensor, float]) -> list[Tensor]:
        """:meth:`item_inputs` of several index tensors (each with its id dropout) at once,
        each distinct (item, id hidden or not) computed once: a batch's histories and targets
        name far fewer items than they have slots, and the id table's gradient is then one
        scatter rather than one per use. Returns one [*, id_dim] per part, in order."""
        keys = []
        for items, dropout in parts:
            key = items.reshape(-1) * 2
            if dropout > 0 and self.training:
                key = key + (torch.rand(key.shape, device=key.device) < dropout)
            keys.append(key)
        unique, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        items = unique // 2
        ids = items.masked_fill(unique % 2 == 1, 0)
        x = self.item_tower.inputs(
            ids, self.item_cat[items], self.item_multi[items], self.item_num[items]
        ).index_select(0, inverse)
        sizes = [k.numel() for k in keys]
        return [
            part.reshape(*items_.shape, x.shape[-1])
            for part, (items_, _) in zip(x.split(sizes), parts, strict=True)
        ]

    def item_embeddings(self, items: Tensor, id_dropout: float = 0.0) -> Tensor:
        """Items [*] -> [*, dim], L2-normalised."""
        return self.item_tower.output(self.item_inputs(items, id_dropout))

    @torch.no_grad()
    def all_item_embeddings(self, chunk: int = 65536) -> Tensor:
        """Embeddings of every item index 0..N, [N+1, dim], computed ``chunk`` items at a
        time on the model's device; row 0 is the padding item."""
        n = self.spec.n_items + 1
        ids = torch.arange(n, device=self.item_cat.device)
        return torch.cat([self.item_embeddings(ids[i : i + chunk]) for i in range(0, n, chunk)])

    def user_embeddings(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        history: Tensor,
    ) -> Tensor:
        """``history`` int64 [B, L] of 1-based items, 0-padded on the left (most recent
        last) -> [B, dim], L2-normalised."""
        mask = history > 0
        h = self.item_inputs(history)
        return self.user_tower(user_hash, user_cat, user_num, context, h, mask)

    def sequence_user_embeddings(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        sequence: Tensor,
    ) -> Tensor:
        """The user embedding after every prefix of ``sequence`` int64 [S, L] (1-based items,
        oldest first, 0-padded on the right), in one pass: [S, L, dim], L2-normalised; row
        ``t`` equals :meth:`user_embeddings` of the history ``sequence[:, :t + 1]``.
        ``context`` [S, L, K] is the request context at each position. Needs
        ``causal_history``."""
        if not self.user_tower.causal:
            raise ValueError("sequence_user_embeddings needs a model built with causal_history")
        mask = sequence > 0
        h = self.item_inputs(sequence)
        return self.user_tower.forward_all(user_hash, user_cat, user_num, context, h, mask)


def tower_spec(data: Interactions) -> TowerSpec:
    """The embedding cardinalities and feature counts of ``data``'s encoders."""
    ue, ie = data.user_encoder, data.item_encoder
    return TowerSpec(
        n_items=data.n_items,
        item_categorical=tuple(ie.cardinalities(ie.columns)),
        item_multi=tuple(ie.cardinalities(ie.multi)),
        item_numeric=len(ie.numeric),
        user_categorical=tuple(ue.cardinalities(ue.columns)),
        user_numeric=len(ue.numeric),
        context=tuple(len(v) + 1 for v in data.context_vocabs.values()),
    )


def build_model(
    spec: TowerSpec,
    m: ModelConfig,
    item_cat: np.ndarray,
    item_multi: np.ndarray,
    item_num: np.ndarray,
) -> TwoTower:
    """The model ``m`` describes, over the item metadata tables (``[N+1, ...]``, row 0
    padding)."""
    return TwoTower(
        spec,
        torch.from_numpy(item_cat),
        torch.from_numpy(item_multi),
        torch.from_numpy(item_num),
        dim=m.dim,
        id_dim=m.id_dim,
        feature_dim=m.feature_dim,
        hidden=m.hidden,
        dropout=m.dropout,
        encoder=m.sequence_encoder,
        history_length=m.history_length,
        layers=m.encoder_layers,
        heads=m.encoder_heads,
        user_id_buckets=m.user_id_buckets,
        causal_history=m.causal_history,
        ensemble=m.ensemble,
    )
