"""The re-ranker, a plain ``nn.Module``: DCN-v2 (Wang et al., WWW 2021) explicit feature
crosses stacked with a deep MLP, over user, item and context fields, the two towers'
embeddings and the ranking features of :mod:`tailored.data.ranking_features`.

Every input is per row (one row = one candidate of one request), so the exported ONNX
graph has one dynamic batch axis. Dense features are standardised inside the model with
statistics fitted on the training rows, so serving passes them raw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tailored.train.two_tower.model import FeatureBlock

__all__ = [
    "MIN_DENSE_STD",
    "RANKER_INPUTS",
    "CrossNetwork",
    "Ranker",
    "RankerEnsemble",
    "RankerSpec",
]

# the least spread a dense feature is standardised by (Ranker.set_dense_stats)
MIN_DENSE_STD = 1e-3

# names and order of the ranker's inputs (the ONNX graph's input names)
RANKER_INPUTS = (
    "user_cat",  # int64 [B, Cu]
    "user_num",  # float32 [B, Fu]
    "context",  # int64 [B, K]
    "item_cat",  # int64 [B, Ci]
    "item_multi",  # int64 [B, Mi, T]
    "item_num",  # float32 [B, Fi]
    "dense",  # float32 [B, F] raw ranking features
    "user_emb",  # float32 [B, D] user tower output
    "item_emb",  # float32 [B, D] item tower output
)


@dataclass(frozen=True)
class RankerSpec:
    """Input sizes (from the data and the two-tower model) and the ranker's own sizes."""

    user_categorical: tuple[int, ...]
    user_numeric: int
    context: tuple[int, ...]
    item_categorical: tuple[int, ...]
    item_multi: tuple[int, ...]
    item_numeric: int
    dense: int
    embedding_dim: int
    feature_dim: int = 8
    cross_layers: int = 3
    hidden: int = 256
    dropout: float = 0.1
    embeddings: bool = True  # the towers' vectors as inputs (their product and the item's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RankerSpec:
        tuples = ("user_categorical", "context", "item_categorical", "item_multi")
        kwargs: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in obj.items()}
        return cls(**kwargs)


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, [B, d] -> [B, d]."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class Ranker(nn.Module):
    """Rows of :data:`RANKER_INPUTS` -> relevance logits ``float32 [B]``."""

    dense_mean: Tensor
    dense_std: Tensor

    def __init__(self, spec: RankerSpec) -> None:
        super().__init__()
        self.spec = spec
        f = spec.feature_dim
        self.user = FeatureBlock(spec.user_categorical, (), spec.user_numeric, f)
        self.context = FeatureBlock(spec.context, (), 0, f)
        self.item = FeatureBlock(spec.item_categorical, spec.item_multi, spec.item_numeric, f)
        self.register_buffer("dense_mean", torch.zeros(spec.dense))
        self.register_buffer("dense_std", torch.ones(spec.dense))
        # the towers' embeddings enter through their product (what retrieval scored) and the
        # item's own vector, each projected small so they do not drown the other features
        d = spec.embedding_dim
        self.match = nn.Linear(d, 2 * f) if spec.embeddings else None
        self.item_vec = nn.Linear(d, 2 * f) if spec.embeddings else None
        width = self.user.out_dim + self.context.out_dim + self.item.out_dim + spec.dense
        width += 4 * f if spec.embeddings else 0
        self.cross = CrossNetwork(width, spec.cross_layers)
        self.deep = nn.Sequential(
            nn.Linear(width, spec.hidden),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.hidden // 2),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden // 2, 1),
        )

    def set_dense_stats(self, mean: Tensor, std: Tensor) -> None:
        """Standardisation of the dense features, fitted on the training rows. A feature
        constant there (``shown_before`` where nothing was shown, say) is centred and not
        scaled: divided by its 0 spread floored at 1e-6, any other value at serving would
        reach the network a million times over (a 3-member ensemble's ONNX export differed
        from torch by 2.6e10 through one such member). A spread that is not 0 is scaled by
        at most 1 / :data:`MIN_DENSE_STD`: an ensemble member whose ``ease_score`` varied by
        7.6e-6 over its rows of a small site was scaled 130,000 times, and its float32
        rounding made ONNX and torch differ by 0.125 (on an AMD EPYC, not on an Intel
        Xeon). The synthetic site's smallest spread is 0.01 (``ease_score``)."""
        self.dense_mean.copy_(mean)
        scale = std.clamp(min=MIN_DENSE_STD)
        self.dense_std.copy_(torch.where(std > 1e-6, scale, torch.ones_like(std)))

    def forward(
        self,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        item_cat: Tensor,
        item_multi: Tensor,
        item_num: Tensor,
        dense: Tensor,
        user_emb: Tensor,
        item_emb: Tensor,
    ) -> Tensor:
        empty = item_multi[:, :0]
        parts = [
            self.user(user_cat, empty, user_num),
            self.context(context, empty, user_num[:, :0]),
            self.item(item_cat, item_multi, item_num),
            (dense - self.dense_mean) / self.dense_std,
        ]
        if self.match is not None and self.item_vec is not None:
            parts += [self.match(user_emb * item_emb), self.item_vec(item_emb)]
        # no layer norm over x0: it would rescale each row by all its features together,
        # which measured worse than the standardised features alone
        x0 = torch.cat(parts, dim=-1)
        return self.deep(self.cross(x0)).squeeze(-1)


class RankerEnsemble(nn.Module):
    """Several :class:`Ranker` of one spec, each fitted with another part of the requests held
    out; their logits averaged. Same inputs and output, so it exports as one ONNX graph."""

    def __init__(self, members: list[Ranker]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one ranker")
        self.members = nn.ModuleList(members)
        self.spec = members[0].spec

    def forward(  # the inputs named one by one: the ONNX export maps its axes by name
        self,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        item_cat: Tensor,
        item_multi: Tensor,
        item_num: Tensor,
        dense: Tensor,
        user_emb: Tensor,
        item_emb: Tensor,
    ) -> Tensor:
        inputs = (user_cat, user_num, context, item_cat, item_multi, item_num, dense)
        return torch.stack([m(*inputs, user_emb, item_emb) for m in self.members]).mean(0)
