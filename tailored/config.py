"""Typed configuration, loaded from TOML and validated once, here.

Each section is a frozen dataclass; :func:`load_config` rejects unknown keys, wrong types
and out-of-range values with a :class:`~tailored.errors.ConfigError` that names the key
(``[model] dim: must be > 0, got -3``). Everything downstream takes these objects or plain
arguments, never a dict.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailored.errors import ConfigError

__all__ = [
    "EVENT_ROLES",
    "EVENT_TYPES",
    "Config",
    "DataConfig",
    "EventRole",
    "IndexConfig",
    "LossConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RankerConfig",
    "SegmentsConfig",
    "ServeConfig",
    "TrainConfig",
    "load_config",
    "load_serve_config",
]

# the event types with a name of their own in Track's proto (any other is a name in
# configuration: [data.events]); and the roles an event type can play
EVENT_TYPES: tuple[str, ...] = ("impression", "click", "view", "rating", "purchase")
EVENT_ROLES: tuple[str, ...] = ("positive", "exposure", "negative", "ignored")
# an event type's name, as a dataset stores it and Track accepts it
EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


@dataclass(frozen=True)
class EventRole:
    """What an event type means to tailored.

    ``positive``: feedback the models learn from, weighted by ``weight``; an event whose
    ``value`` (dwell seconds, a rating) is below ``min_value`` is none, and one without a value
    is none when ``needs_value``. ``exposure``: the item was shown (an impression).
    ``negative``: the user turned the item down (hide, dislike): it is not shown to them
    again. ``ignored``: stored, not used. A type no rule names is ignored."""

    role: str
    weight: float = 1.0
    min_value: float | None = None
    needs_value: bool = False

    def counts(self, value: float | None) -> bool:
        """Whether an event of this type with ``value`` (None or NaN: no value) is a positive."""
        if self.role != "positive":
            return False
        if value is None or math.isnan(value):
            return not self.needs_value
        return self.min_value is None or value >= self.min_value


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is split, and which events count as positive feedback."""

    dataset: str = "movielens-100k"
    split: str = "user_temporal"  # "user_temporal" | "global_time" | "presplit"
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    valid_start: int = 0  # global_time: unix seconds where validation starts
    test_start: int = 0  # global_time: unix seconds where test starts
    # event type -> weight of a positive example; a view counts only from min_view_seconds
    positive_events: dict[str, float] = field(
        default_factory=lambda: {"click": 1.0, "rating": 1.0, "purchase": 1.0, "view": 1.0}
    )
    min_view_seconds: float = 30.0
    min_rating: float = 0.0  # ratings below this are not positives (0: every rating is)
    # every event type's role, by name (replaces the three keys above when given):
    # click = { role = "positive", weight = 1.0, min_value = 5 }   (dwell seconds)
    # add_to_cart = { role = "positive", weight = 2.0 }; impression = { role = "exposure" }
    # hide = { role = "negative" }; share = { role = "ignored" }. See EventRole.
    events: dict[str, dict[str, str | float | bool]] = field(default_factory=dict)
    # a positive of an item the user had a positive of at most this long before (a purchase
    # after the click) is the same example, weighted by the larger weight (0: every event is
    # one); without it a history reads X, X
    merge_repeat_seconds: int = 3600
    # weight each positive that records its page slot (``[events] position``) by 1 / how
    # often that slot is looked at, estimated from the training period's click-through by
    # slot (inverse propensity): a click in slot 12 counts more than one in slot 1
    position_debias: bool = False

    def event_roles(self) -> dict[str, EventRole]:
        """Each configured event type's role (``events``, else the legacy keys: the
        ``positive_events`` with their weights, a view from ``min_view_seconds``, a rating from
        ``min_rating``, and impressions as exposures)."""
        if self.events:
            return {name: _event_role(name, spec) for name, spec in self.events.items()}
        roles = {"impression": EventRole("exposure")}
        for name, weight in self.positive_events.items():
            if name == "view":
                roles[name] = EventRole("positive", weight, self.min_view_seconds, True)
            elif name == "rating" and self.min_rating > 0:
                roles[name] = EventRole("positive", weight, self.min_rating, True)
            else:
                roles[name] = EventRole("positive", weight)
        return roles

    def validate(self) -> None:
        _one_of("data", "split", self.split, ("user_temporal", "global_time", "presplit"))
        for name in ("valid_ratio", "test_ratio"):
            v = getattr(self, name)
            # validation drives early stopping and checkpoints, so it cannot be empty
            if not 0.0 < v < 0.5:
                raise ConfigError(f"[data] {name}: must be in (0, 0.5), got {v}")
        if self.split == "global_time" and not 0 < self.valid_start < self.test_start:
            raise ConfigError(
                "[data] valid_start/test_start: the global_time split needs "
                "0 < valid_start < test_start (unix seconds)"
            )
        for k, w in self.positive_events.items():
            _event_name(f"[data] positive_events.{k}", k)
            if not w > 0:
                raise ConfigError(f"[data] positive_events.{k}: weight must be > 0, got {w}")
        if not self.positive_events:
            raise ConfigError("[data] positive_events: name at least one event type")
        if self.min_view_seconds < 0:
            raise ConfigError(f"[data] min_view_seconds: must be >= 0, got {self.min_view_seconds}")
        if self.merge_repeat_seconds < 0:
            raise ConfigError(
                f"[data] merge_repeat_seconds: must be >= 0, got {self.merge_repeat_seconds}"
            )
        if self.events:
            legacy = DataConfig()
            for name in ("positive_events", "min_view_seconds", "min_rating"):
                if getattr(self, name) != getattr(legacy, name):
                    raise ConfigError(
                        f"[data] {name}: give either [data.events] or {name}, not both (in "
                        "[data.events], a threshold is the type's min_value)"
                    )
        roles = self.event_roles()  # checks every rule
        if not any(r.role == "positive" for r in roles.values()):
            raise ConfigError("[data] events: name at least one event type with role 'positive'")
        for name in ("valid_start", "test_start"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[data] {name}: must be >= 0 (unix seconds)")


@dataclass(frozen=True)
class ModelConfig:
    """The two towers. Sizes are per feature embedding unless said otherwise."""

    dim: int = 64  # output embedding size of both towers
    id_dim: int = 64  # item id embedding size (shared with the history encoder)
    feature_dim: int = 16  # embedding size of each categorical metadata/profile field
    hidden: int = 256  # width of the towers' MLPs
    history_length: int = 50  # most recent positives the user tower reads
    sequence_encoder: str = "transformer"  # "transformer" | "gru" | "mean"
    encoder_layers: int = 2
    encoder_heads: int = 2
    dropout: float = 0.2
    user_id_buckets: int = 0  # hashed user-id embedding; 0 disables it
    # each numeric user and item field (age, price) is also embedded by its quantile range, at
    # most this many (0: the standardised value alone); see tailored.data.features
    numeric_buckets: int = 10
    item_id_dropout: float = 0.1  # train the item tower to embed from metadata alone too
    context_dropout: float = 0.5
    # the history encoder reads causally from the window's oldest item, and training scores
    # every position of a chunk of a user's positives in one pass (SASRec-style) instead of
    # one re-encoded history per event; [train] batch_size then counts chunks
    causal_history: bool = False
    # after training, the id vectors of items without a training positive (never updated:
    # their random initial values) are set to the new-item vector, so that such an item is
    # embedded from its metadata, like a new item, rather than from noise
    reset_untrained_ids: bool = True
    # pairs of towers, each trained as a run of its own ([train] seed + k: its own initial
    # weights, batches and early stopping), then put side by side: a user and an item are
    # embedded as every pair's vectors concatenated (over sqrt(ensemble)), so one inner product
    # (one index search) averages the pairs' scores. Embeddings ``ensemble`` times wider (dim
    # each), training as many times longer
    ensemble: int = 1

    def validate(self) -> None:
        for name in (
            "ensemble",
            "dim",
            "id_dim",
            "feature_dim",
            "hidden",
            "history_length",
            "encoder_layers",
            "encoder_heads",
        ):
            _positive("model", name, getattr(self, name))
        _one_of("model", "sequence_encoder", self.sequence_encoder, ("transformer", "gru", "mean"))
        if self.id_dim % self.encoder_heads:
            raise ConfigError(f"[model] encoder_heads: must divide id_dim ({self.id_dim})")
        for name in ("dropout", "item_id_dropout", "context_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"[model] {name}: must be in [0, 1), got {v}")
        if self.user_id_buckets < 0:
            raise ConfigError("[model] user_id_buckets: must be >= 0")
        if self.numeric_buckets == 1 or self.numeric_buckets < 0:
            raise ConfigError(
                f"[model] numeric_buckets: must be 0 (none) or at least 2, got "
                f"{self.numeric_buckets}"
            )


@dataclass(frozen=True)
class LossConfig:
    """Sampled softmax over in-batch negatives (Yi et al., RecSys 2019)."""

    temperature: float = 0.05
    logq_correction: bool = True
    mask_accidental_hits: bool = True
    mask_user_positives: bool = True  # an in-batch item the user also engaged with is no negative
    uniform_negatives: int = 0  # extra uniformly sampled negatives per batch (mixed negatives)
    # a site clicks what it shows: the chance of a click on item i is its exposure times the
    # user's interest in it. With a weight a > 0 every item's training logit gets
    # ``a x log(the item's share of the known periods' exposures)`` added, so that the
    # towers learn the interest and not how often the site showed the item (the offset is
    # not served). Needs exposure events (impressions); 0: off. On the synthetic site 0.5
    # raised retrieval's share of the planted tastes by 6% but not the ranker's lists
    # (benchmarks/RESULTS.md, "What a site logs")
    exposure_correction: float = 0.0

    def validate(self) -> None:
        _positive("loss", "temperature", self.temperature)
        if self.uniform_negatives < 0:
            raise ConfigError("[loss] uniform_negatives: must be >= 0")
        a = self.exposure_correction
        if isinstance(a, bool) or not (isinstance(a, int | float) and 0 <= a < math.inf):
            raise ConfigError(f"[loss] exposure_correction: must be a number >= 0, got {a!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The Lightning loop."""

    seed: int = 0
    max_epochs: int = 30
    max_minutes: float = 0.0  # stop training after this long (0: no limit)
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    # lr is tuned for a batch of lr_reference_batch examples (0: for batch_size, as is); a
    # run whose global batch (batch_size x devices x num_nodes) differs scales it: "linear"
    # (Goyal et al. 2017), "sqrt" (what Adam-like optimizers tend to want), or "none"
    lr_scaling: str = "none"
    lr_reference_batch: int = 0
    # early stopping: validation checks without progress on valid ndcg@10 (one check an
    # epoch unless val_checks_per_epoch says more: then this counts checks, not epochs)
    patience: int = 5
    # the learning rate over the optimizer steps: "constant"; "plateau" (multiplied by
    # lr_factor after more than lr_patience validation checks without a new best valid
    # ndcg@10, torch's ReduceLROnPlateau rule); "cosine" (from lr down to lr_min_ratio * lr
    # along half a cosine over the planned steps, max_epochs times the first epoch's steps:
    # early stopping or max_minutes, which cannot be planned for, end it at a higher rate);
    # "auto": "plateau" where lr_patience > 0, else "constant" (what lr_patience alone did)
    lr_schedule: str = "auto"
    # the rate rises linearly from lr / lr_warmup_steps to lr over the first lr_warmup_steps
    # optimizer steps (0: no warm-up), then follows lr_schedule (cosine: over the rest)
    lr_warmup_steps: int = 0
    lr_min_ratio: float = 0.0  # "cosine": the last step's rate, as a share of lr
    lr_patience: int = 0  # "plateau": validation checks without progress before the rate drops
    lr_factor: float = 0.3  # "plateau": what the rate is multiplied by then
    # validation (and with it the checkpoint kept, early stopping and the plateau schedule)
    # about this many times an epoch: after every 1/N of its batches (exactly N where the
    # epoch has N * N batches or more). 0 = auto: once an epoch, or, where an epoch has many
    # steps, about every max(1000, 10 x the validation's batches) steps, 10 times at most
    val_checks_per_epoch: int = 0
    # torch's threads for training (intra- and inter-op; the ranker's too). 0 = auto: half
    # the CPUs this process may use (about its physical cores), shared by the devices' DDP
    # processes, at most 8. More threads than free cores is ruinous on a shared machine:
    # on 2 cores beside one busy process, 2 threads trained MovieLens-100k at 285 examples/s
    # against 8,864 on 1 thread (alone: 7,500-11,800 on 2 against 8,900 on 1)
    threads: int = 0
    # predict one of the next W items from the history (1: the next), in the causal
    # sequence path too; on MovieLens-100k the next item is best: retrieval NDCG@10 0.2041
    # against 0.1947 with 3 (seed 0, benchmarks/RESULTS.md)
    target_window: int = 1
    # validate, checkpoint and keep an exponential moving average of the weights, updated each
    # step with this decay (0: off); it smooths the noisy peaks early stopping picks from
    ema_decay: float = 0.0
    # [model] causal_history: targets per training chunk (0: history_length); each target
    # then has at least history_length - sequence_targets items of history
    sequence_targets: int = 0
    devices: int = 1  # devices per node (GPUs; on the CPU, processes)
    num_nodes: int = 1  # machines, each running ``devices`` processes (Lightning's num_nodes)
    accelerator: str = "auto"
    # "auto": bf16-mixed on CUDA, else 32-true; or any of Lightning's names for one of those
    precision: str = "auto"
    strategy: str = "auto"  # "auto" | "ddp": several devices train under DDP either way
    # torch.compile the towers' training passes (the user tower, the item tower's output MLP).
    # Off by default: on this project's 2-vCPU CPU it made a step at batch 1,024 slower
    # (benchmarks/scale/train_feed.py measures it with --compile)
    compile: bool = False
    # where the training arrays live, each batch gathered from them by index: "device" (the
    # training device: no host work per step), "host" (host memory, pinned where there is a
    # GPU: each batch gathered there and copied over), "auto" (the device where they take at
    # most 40% of its free memory, else the host; on the CPU the two are one)
    feed: str = "auto"
    limit_val_users: int = 0  # validate on at most this many users (0: all)
    # the run's final full-ranking report (metrics.json) on at most this many users per split,
    # sampled (0: all); at a million items each user costs a pass over the catalog
    final_eval_users: int = 20_000
    logger: str = "csv"  # "csv" | "tensorboard"
    # the progress bar, where the output is a terminal; elsewhere (a log file, a job's output)
    # a progress line every progress_seconds instead of a bar's carriage returns
    progress_bar: bool = True
    progress_seconds: float = 30.0

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over every device and node."""
        return self.batch_size * self.devices * self.num_nodes

    @property
    def scaled_lr(self) -> float:
        """``lr`` scaled from ``lr_reference_batch`` to the global batch (``lr_scaling``)."""
        if self.lr_scaling == "none" or not self.lr_reference_batch:
            return self.lr
        ratio = self.global_batch / self.lr_reference_batch
        return self.lr * (ratio if self.lr_scaling == "linear" else math.sqrt(ratio))

    @property
    def schedule(self) -> str:
        """``lr_schedule`` with "auto" resolved: "constant", "plateau" or "cosine"."""
        if self.lr_schedule == "auto":
            return "plateau" if self.lr_patience else "constant"
        return self.lr_schedule

    def validate(self) -> None:
        for name in (
            "max_epochs",
            "batch_size",
            "devices",
            "num_nodes",
            "patience",
            "target_window",
        ):
            _positive("train", name, getattr(self, name))
        _positive("train", "lr", self.lr)
        if not 0.0 <= self.progress_seconds < math.inf:
            raise ConfigError(
                f"[train] progress_seconds: must be >= 0, got {self.progress_seconds}"
            )
        if not 0 <= self.seed < 2**32:  # what numpy and Lightning accept as a seed
            raise ConfigError(f"[train] seed: must be in [0, 2**32), got {self.seed}")
        for name in (
            "weight_decay",
            "limit_val_users",
            "final_eval_users",
            "max_minutes",
            "lr_patience",
            "lr_warmup_steps",
            "val_checks_per_epoch",
            "threads",
            "sequence_targets",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"[train] {name}: must be >= 0, got {getattr(self, name)}")
        _one_of("train", "lr_schedule", self.lr_schedule, ("auto", "constant", "plateau", "cosine"))
        if self.lr_schedule == "plateau" and not self.lr_patience:
            raise ConfigError(
                '[train] lr_schedule: "plateau" needs lr_patience >= 1 (validation checks '
                "without progress before the rate drops)"
            )
        if self.lr_patience and self.lr_schedule in ("constant", "cosine"):
            raise ConfigError(
                f"[train] lr_patience: only the plateau schedule reads it, and lr_schedule is "
                f'"{self.lr_schedule}" (set lr_patience = 0, or lr_schedule = "plateau")'
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ConfigError(f"[train] lr_min_ratio: must be in [0, 1], got {self.lr_min_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"[train] ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"[train] lr_factor: must be in (0, 1), got {self.lr_factor}")
        _one_of("train", "logger", self.logger, ("csv", "tensorboard"))
        _one_of("train", "feed", self.feed, ("auto", "device", "host"))
        _one_of("train", "lr_scaling", self.lr_scaling, ("none", "linear", "sqrt"))
        if self.lr_reference_batch < 0:
            raise ConfigError(
                f"[train] lr_reference_batch: must be >= 0, got {self.lr_reference_batch}"
            )
        if self.lr_scaling != "none" and not self.lr_reference_batch:
            raise ConfigError(
                f'[train] lr_scaling = "{self.lr_scaling}" needs lr_reference_batch: the batch '
                "lr was tuned for"
            )
        _one_of("train", "accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda"))
        _one_of("train", "precision", self.precision, ("auto", "32-true", "bf16-mixed"))
        # not "ddp_spawn": its ranks start at fit, after the read each rank does of its shard
        _one_of("train", "strategy", self.strategy, ("auto", "ddp"))


# the item-item model's size at most: fitting it holds two K x K float64 matrices (4 GiB
# together at this cap) and the bundle stores K x K float32 (1 GiB)
MAX_EASE_ITEMS = 16_384


@dataclass(frozen=True)
class RankerConfig:
    """The re-ranker (DCN-v2 crosses over user, item, context and ranking features), trained
    on the two towers' own top-``candidates`` for users with held-out (validation) items."""

    enabled: bool = True
    candidates: int = 200  # retrieved per request, then re-ranked
    cross_layers: int = 3
    hidden: int = 256  # width of the deep part
    feature_dim: int = 8  # embedding size of each categorical field
    dropout: float = 0.3
    lr: float = 3e-3
    weight_decay: float = 1e-3
    batch_users: int = 128  # requests (candidate lists) per batch
    # which inputs beside the ranking features: the user's profile fields, the item's
    # metadata fields, the two towers' vectors (few users -> fewer inputs overfit less)
    user_fields: bool = True
    item_fields: bool = True
    embeddings: bool = True
    max_epochs: int = 30
    patience: int = 4  # early stopping on the held-out requests' ndcg@10
    holdout: float = 0.2  # share of the training requests held out for early stopping
    max_users: int = 20_000  # training requests at most (sampled, seeded)
    # requests per user: the first when their validation period began, then when 1/n, 2/n...
    # of it had passed (those items joined the history), each labelled by the rest
    lists_per_user: int = 1
    # rankers averaged: each holds out another of this many disjoint folds of the users (and
    # stops early on it); 1 = one ranker with ``holdout`` of the users held out. Serving runs
    # every member, so a request's ranking costs about this many times more
    ensemble: int = 1
    # training loss: "softmax" (listwise cross-entropy) or "lambdarank" (pairs weighted by
    # their NDCG change)
    loss: str = "softmax"
    # the item-item linear model behind the ``ease_score`` feature (EASE): the items with the
    # most users it models (its inverse is this size squared; 0 = no model, the feature 0)
    # and its L2 penalty (larger data wants larger; 100 is best on MovieLens-100k's
    # validation split among 25-800)
    ease_items: int = 4096
    ease_l2: float = 100.0
    # when a training request is made, which sets the gaps its time features see (hours since
    # the user's last event, since a tag, item age): "next_event" at the user's first
    # validation event (the user just came back: gaps of seconds on MovieLens), "serving" as
    # a server stamps it: where the training split ends (the bundle clock) plus a delay drawn
    # per request from ``request_delay_days`` (each value equally likely; a user's
    # ``lists_per_user`` lists each draw their own), item counts frozen at that cut as a
    # bundle's are, the history every training event, labels every validation event;
    # "mixed": both sets of lists (a live server sees both: users back after a gap, and users
    # whose recent events it tracked). MovieLens-100k test NDCG@10, 3 seeds, retrieval alone
    # 0.1997 (benchmarks/quality/ranker_clock.py): "next_event" 0.2171 at the next event but
    # 0.1584 / 0.1540 at the bundle clock / +30 days; "serving" 0.1995 / 0.2162 / 0.2172;
    # "mixed" 0.2185 / 0.2186 / 0.2182, the best at every clock (twice the lists to fit)
    request_time: str = "mixed"
    request_delay_days: tuple[float, ...] = (0.0, 1.0, 7.0, 30.0)
    # an item shown to the user in the labelled period and not engaged with is a negative
    # this much heavier than an unshown candidate: 1 + w x the chance the user looked at it
    # (its slot's examination with ``[data] position_debias``, else 1). 0: impressions are
    # not negatives. Only datasets with exposure events have any
    impression_negative_weight: float = 1.0
    # each label of a training list counts by the weight of the user's engagement with it
    # (its event type's weight, the larger of a click and the purchase merged into it; with
    # ``[data] position_debias``, over its slot's examination) rather than 1: the softmax loss
    # gives a purchased item more of the list's probability than a clicked one
    graded_labels: bool = False
    # what two items must share to co-occur in the ``cooc_recent`` features' table and the
    # bundle's neighbours (which the "because you watched" module and related items serve):
    # "users" (both among a user's recent positives) or "sessions" (both in one of the user's
    # sessions, for data that logs them: the mapping's ``[events] session``; a positive with
    # no session logged pairs with the user's others that have none)
    cooccurrence: str = "users"
    # candidates ordered by z(ranker score) - popularity_penalty x z(item_count), each
    # standardised within the request (item_count: log of the item's known interactions),
    # wherever the ranker orders a list (serving, `tailored evaluate`): clicks follow
    # exposure, and a site shows its popular items most, so a ranker fitted to clicks
    # over-counts them. 0: the ranker's own order
    popularity_penalty: float = 0.0
    # the penalty orders only the places under the ranker's first this many candidates,
    # which keep its own order: the tail of each list, where a list has the least weight,
    # then reaches less known items (MovieLens-100k, 3 seeds: coverage@10 0.397 -> 0.461
    # for 0.0010 of NDCG@10 with 8 and a penalty of 0.4; the penalty over the whole list
    # costs 0.0055-0.007 for coverage 0.45; benchmarks/RESULTS.md). 0: the whole list.
    # The places are the list's: [serve] new_item_slots replaces its last ones too, and
    # with diversity on (mmr_lambda < 1) MMR reads the head's lead as relevance
    popularity_penalty_below: int = 0
    # the ranker's counterpart of ``[loss] exposure_correction``: while it trains, each
    # candidate's logit gets this weight x log(the item's share of the known periods'
    # exposures) added (not when it ranks), so that it learns what users click given what
    # the site shows rather than what the site shows. Needs exposure events; 0: off. It
    # corrects the bias ``popularity_penalty`` corrects (not both): on the synthetic site 0.3
    # without the penalty is level with the penalty at 0.3 (benchmarks/RESULTS.md)
    exposure_correction: float = 0.0
    # cohort definitions, each a list of user profile fields whose combination makes a
    # cohort (a numeric field by its range, ``[model] numeric_buckets``), e.g. [["gender"],
    # ["age"], ["region"]]: the ``cohort_lift`` / ``cohort_lift_max`` features say how much
    # more than everyone the user's cohorts engaged with each candidate. Cohorts of fewer
    # than ``cohort_min_users`` users with a positive are left out: the bundle stores no
    # small group's items. Empty: no cohorts, the features 0
    cohorts: tuple[tuple[str, ...], ...] = ()
    cohort_min_users: int = 20

    def validate(self) -> None:
        _one_of("ranker", "loss", self.loss, ("softmax", "lambdarank"))
        defs = self.cohorts
        if not isinstance(defs, list | tuple) or not all(
            isinstance(d, list | tuple) and d and all(isinstance(f, str) and f for f in d)
            for d in defs
        ):
            raise ConfigError(
                "[ranker] cohorts: a list of cohort definitions, each a non-empty list of user "
                f'field names (e.g. [["gender"], ["age", "region"]]), got {defs!r}'
            )
        for d in defs:
            if len(set(d)) != len(d):
                raise ConfigError(f"[ranker] cohorts: a field is named twice in {list(d)!r}")
        object.__setattr__(self, "cohorts", tuple(tuple(d) for d in defs))
        m = self.cohort_min_users
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"[ranker] cohort_min_users: must be an integer >= 1, got {m!r}")
        a = self.exposure_correction
        if isinstance(a, bool) or not (isinstance(a, int | float) and 0 <= a < math.inf):
            raise ConfigError(f"[ranker] exposure_correction: must be a number >= 0, got {a!r}")
        _one_of("ranker", "cooccurrence", self.cooccurrence, ("users", "sessions"))
        p = self.popularity_penalty
        if isinstance(p, bool) or not (isinstance(p, int | float) and 0 <= p < math.inf):
            raise ConfigError(f"[ranker] popularity_penalty: must be a number >= 0, got {p!r}")
        b = self.popularity_penalty_below
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ConfigError(
                f"[ranker] popularity_penalty_below: must be an integer >= 0, got {b!r}"
            )
        if self.graded_labels and self.loss != "softmax":
            raise ConfigError('[ranker] graded_labels: needs loss = "softmax"')
        w = self.impression_negative_weight
        if not (isinstance(w, int | float) and 0 <= w < math.inf):
            raise ConfigError(f"[ranker] impression_negative_weight: must be >= 0, got {w!r}")
        _one_of("ranker", "request_time", self.request_time, ("next_event", "serving", "mixed"))
        delays = self.request_delay_days
        if (
            not isinstance(delays, list | tuple)
            or not delays
            or not all(
                isinstance(d, int | float) and not isinstance(d, bool) and 0 <= d < math.inf
                for d in delays
            )
        ):
            raise ConfigError(
                "[ranker] request_delay_days: a non-empty list of finite numbers of days >= 0, "
                f"got {delays!r}"
            )
        object.__setattr__(self, "request_delay_days", tuple(float(d) for d in delays))
        for name in ("candidates", "cross_layers", "hidden", "feature_dim", "batch_users"):
            _positive("ranker", name, getattr(self, name))
        for name in (
            "lr",
            "max_epochs",
            "patience",
            "max_users",
            "lists_per_user",
            "ensemble",
        ):
            _positive("ranker", name, getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"[ranker] dropout: must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.holdout < 0.9:
            raise ConfigError(f"[ranker] holdout: must be in (0, 0.9), got {self.holdout}")
        if self.weight_decay < 0:
            raise ConfigError(f"[ranker] weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 <= self.ease_items <= MAX_EASE_ITEMS:
            raise ConfigError(
                f"[ranker] ease_items: must be in [0, {MAX_EASE_ITEMS}] (its inverse is that "
                f"size squared, in float64), got {self.ease_items}"
            )
        _positive("ranker", "ease_l2", self.ease_l2)


@dataclass(frozen=True)
class IndexConfig:
    """The item index: its kind ("auto" picks by catalog size) and parameter overrides, and
    how the recall of an approximate index against exact search is measured."""

    kind: str = "auto"  # "auto" | "exact" | "hnsw" | "ivfflat" | "ivfpq" | "torch"
    params: dict[str, float] = field(default_factory=dict)
    recall_queries: int = 1000  # user embeddings sampled to measure recall@k
    recall_k: int = 100
    # an approximate index searches wider (nprobe / efSearch doubled) until its measured
    # recall@k reaches this (0: keep the chosen parameters)
    target_recall: float = 0.95
    # ... but only as wide as one search (batch 1, one thread, recall_k deep, timed on the
    # building machine) stays within this many milliseconds; a default over it is narrowed
    # (0: no budget). 0.75 ms keeps the search under the user tower's cost on a server core
    search_budget_ms: float = 0.75

    def validate(self) -> None:
        _one_of("index", "kind", self.kind, ("auto", "exact", "hnsw", "ivfflat", "ivfpq", "torch"))
        _positive("index", "recall_queries", self.recall_queries)
        _positive("index", "recall_k", self.recall_k)
        if not 0.0 <= self.target_recall <= 1.0:
            raise ConfigError(f"[index] target_recall: must be in [0, 1], got {self.target_recall}")
        if not 0.0 <= self.search_budget_ms < math.inf:
            raise ConfigError(
                f"[index] search_budget_ms: must be a finite number >= 0 (0: no budget), "
                f"got {self.search_budget_ms}"
            )
        for name, value in self.params.items():  # nlist, nprobe, m, k_factor, M, efSearch...
            _positive("index", f"params.{name}", value)


@dataclass(frozen=True)
class SegmentsConfig:
    """``[segments]``: user segments, k-means over the user embeddings at bundle build and
    refresh (tailored.retrieval.segments)."""

    k: int = 8  # segments (0: none); `tailored segments BUNDLE --quality 2,4,8,16` helps choose
    niter: int = 25  # k-means iterations
    sample: int = 200_000  # users the centroids are trained on at most (all are assigned)

    def validate(self) -> None:
        if self.k == 1 or self.k < 0:
            raise ConfigError(f"[segments] k: must be 0 (none) or at least 2, got {self.k}")
        _positive("segments", "niter", self.niter)
        _positive("segments", "sample", self.sample)


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: differentially private training of the two towers (user-level DP-SGD,
    :mod:`tailored.privacy.dp` and :mod:`tailored.train.two_tower.private`).

    The unit of privacy is the user: each step samples users independently with probability
    ``dp_users_per_step / users`` (Poisson, as the accountant assumes), takes at most
    ``dp_examples_per_user`` of each sampled user's training examples, clips the gradient of
    that user's whole contribution to ``dp_max_grad_norm`` and adds Gaussian noise. Training
    then runs exactly ``[train] max_epochs`` passes (an epoch: ``users / dp_users_per_step``
    steps), without early stopping, and keeps its last weights.
    """

    dp: bool = False
    dp_epsilon: float = 8.0  # the target: epsilon spent after max_epochs, at dp_delta
    dp_delta: float = 1e-5  # should be well below 1 / users
    dp_max_grad_norm: float = 1.0  # L2 bound of one user's gradient in one step
    dp_examples_per_user: int = 16  # a sampled user's examples in one step, at most
    dp_users_per_step: int = 256  # expected users per step (the Poisson sampling rate's numerator)
    # the noise's standard deviation over dp_max_grad_norm; 0: the smallest that keeps epsilon
    # within dp_epsilon after max_epochs (Opacus's get_noise_multiplier)
    dp_noise_multiplier: float = 0.0
    # negatives per step: items drawn uniformly from the catalog, shared by the step's users
    # (in-batch negatives would put one user's positives into every other user's loss)
    dp_negatives: int = 1024
    dp_accountant: str = "rdp"  # Opacus's accountant: "rdp" | "prv"

    def validate(self) -> None:
        if not 0.0 < self.dp_delta < 1.0:
            raise ConfigError(f"[privacy] dp_delta: must be in (0, 1), got {self.dp_delta}")
        for name in ("dp_epsilon", "dp_max_grad_norm"):
            _positive("privacy", name, getattr(self, name))
        for name in ("dp_examples_per_user", "dp_users_per_step", "dp_negatives"):
            _positive("privacy", name, getattr(self, name))
        if self.dp_noise_multiplier < 0:
            raise ConfigError(
                f"[privacy] dp_noise_multiplier: must be >= 0 (0: derived from dp_epsilon), "
                f"got {self.dp_noise_multiplier}"
            )
        _one_of("privacy", "dp_accountant", self.dp_accountant, ("rdp", "prv"))


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def validate(self) -> Config:
        self.data.validate()
        self.model.validate()
        self.loss.validate()
        self.train.validate()
        self.ranker.validate()
        self.index.validate()
        self.segments.validate()
        self.privacy.validate()
        if self.privacy.dp and self.model.ensemble > 1:
            raise ConfigError(
                "[privacy] dp: DP training trains one pair of towers ([model] ensemble = 1)"
            )
        if self.privacy.dp and self.train.devices * self.train.num_nodes > 1:
            raise ConfigError(
                "[privacy] dp: DP training runs on one device ([train] devices = num_nodes = 1)"
            )
        if self.privacy.dp and self.loss.exposure_correction:
            raise ConfigError(
                "[privacy] dp: DP training reads no statistic of the data, so no "
                "[loss] exposure_correction (set it to 0)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ServeConfig:
    """``tailored serve``: the [serve] table of a serving configuration file."""

    surfaces: tuple[str, ...] = ("home", "item", "search")  # pages that may ask; others fail
    max_k: int = 100  # the most items one Recommend may ask for
    candidates: int = 200  # retrieved per request, then ranked
    # "none" | "mmr" | "category_cap". Off by default: MMR at 0.8 lowered the share of the
    # synthetic site's planted tastes in the top 10 from 0.625 to 0.568 without raising its
    # catalogue coverage (issue 20); a site turns it on where an experiment shows it pays
    diversity: str = "none"
    mmr_lambda: float = 0.8  # relevance vs novelty in MMR (1 = relevance only)
    cap_field: str = ""  # category_cap: item field (default: the first categorical one)
    cap_per_value: int = 3  # category_cap: items per value of that field at most
    history_events: int = 200  # a user's online events read per request
    # an item shown to a user this many times (among their events read) with no click is
    # not shown to them again (0: never hidden): a page that does not go stale
    hide_after_impressions: int = 0
    # the last new_item_slots places of a list go to the new items the user's vector scores
    # best: launched in the new_item_days before the request (an item's window: the
    # catalog's, or its first sight), embedded from their metadata; 0: none (exploration)
    new_item_slots: int = 0
    new_item_days: float = 14.0
    # Page: how modules are ordered ("fixed": as the site sent them; "random"; "bandit": by
    # a contextual bandit that learns from clicks, tailored.experiments.bandit), and at most
    # how many a page may offer
    page_policy: str = "fixed"
    max_page_modules: int = 12
    # a page's decisions are kept this long for the Track events that name it (later ones
    # are refused) and for `tailored page evaluate`; erased with the user
    page_log_days: float = 7.0
    # the bandit: its exploration ("epsilon", "softmax" or "thompson") and that rule's
    # parameter; the prior's precision (ridge)
    bandit_exploration: str = "epsilon"
    bandit_epsilon: float = 0.1
    bandit_temperature: float = 0.05
    bandit_thompson_scale: float = 1.0
    bandit_ridge: float = 1.0
    # the features the bandit solves for at most (the most observed); module ids and the
    # values of bandit_features are meant to be a site's small, fixed vocabulary
    bandit_max_features: int = 512
    # what it sees besides the module's position: "segment" (the user's, from the bundle),
    # "context.FIELD" (the request's context: device, locale or an extra) and
    # "profile.FIELD" (the request's profile); each a one-hot feature per value
    bandit_features: tuple[str, ...] = ("segment", "context.device")
    # whether pages teach it ("page_learn" in an experiment variant overrides), and what
    # counts as a module shown: "served" (every module a Page returned) or "impressions"
    # (those the site reports seen with an impression that names the page and module)
    bandit_learn: bool = True
    bandit_learn_from: str = "served"
    # how often a process reads the shared statistics again (0: every page)
    bandit_refresh_ms: float = 1000.0
    consent_default: str = "granted"  # a user who never set consent: "granted" | "denied"
    # the consent purposes SetConsent accepts (others: INVALID_ARGUMENT); empty: any name
    consent_purposes: tuple[str, ...] = ()
    # events older than this many days are purged from the online state, its event log and
    # the logged pages, every retention_check_minutes inside the server, with the count in the
    # audit (0: kept until erased); `tailored privacy enforce` does the same for datasets and
    # bundles
    retention_days: float = 0.0
    retention_check_minutes: float = 60.0
    # an erasure (Forget, a consent withdrawal) also removes the user's rows from every
    # bundle version under the served root; false where this server cannot rewrite them (a
    # read-only image or volume): the tombstone keeps the rows unused, and `tailored privacy
    # enforce --bundles` on the host that owns them removes them
    erase_bundle_rows: bool = True
    admin_token_env: str = "TAILORED_ADMIN_TOKEN"  # where the admin bearer token comes from
    state: str = ""  # online state URL: sqlite:///PATH or redis://HOST:PORT/DB ("" = SQLite
    # under $TAILORED_HOME/serve)
    workers: int = 8  # threads answering RPCs (per process)
    # server processes on one address (SO_REUSEPORT): one Python process answers with one core
    # at a time, so a machine with spare cores serves more with several
    processes: int = 1
    # ReloadBundle with several processes: seconds to wait for every process to follow
    reload_wait_seconds: float = 100.0  # under the client's 120 s deadline for a reload
    # RPCs running at once (0: workers; at most workers, so each starts on its thread at
    # once); one more arriving is answered RESOURCE_EXHAUSTED at once instead of queueing
    max_concurrent_rpcs: int = 0
    # an experiments file (tailored.experiments) loaded at start; ReloadExperiments reloads it
    experiments: str = ""
    # a call that waited longer than this for a thread (the server is past its capacity) is
    # refused with RESOURCE_EXHAUSTED when the thread takes it, at once (0: no limit)
    max_queue_ms: float = 100.0
    max_events_per_track: int = 1000
    # Track refuses an event stamped more than this ahead of the serving clock (a client
    # sending nanoseconds, or a wrong clock, would otherwise freeze the user's newest events)
    event_max_future_seconds: float = 300.0
    # ... or older than this (a backfill beyond it belongs in a dataset import)
    event_max_age_days: float = 365.0
    # a rating outside [rating_min, rating_max] is refused (MovieLens: 1-5; thumbs: -1/1)
    rating_min: float = 0.0
    rating_max: float = 10.0
    max_view_seconds: float = 86_400.0  # a view's dwell time at most
    watch_seconds: float = 5.0  # poll a bundles directory for new versions (0 = never)
    # a remote online state (Redis) must answer within this, else the call fails: Recommend
    # then answers degraded (popular in context), Track UNAVAILABLE
    state_timeout_seconds: float = 1.0
    # after a failure, the state is not asked again for this long (requests answer degraded
    # at once instead of each waiting for the timeout); then the next request tries it
    state_retry_seconds: float = 1.0
    clock: str = "wall"  # "wall", or "bundle": time starts at the bundle's last event
    history_verb: str = "watched"  # "because you <verb> <title>"
    onnx_threads: int = 1  # intra-op threads per onnxruntime session
    # where the user tower and ranker run: "auto" on CUDA where onnxruntime-gpu can use a
    # GPU (the gpu extra), else the CPU; "cpu"; "cuda" (a bundle is refused without it)
    onnx_device: str = "auto"
    # FAISS's OpenMP threads per search (0: FAISS's default, every core). 1 suits cheap
    # searches under concurrent requests; a costly one (many IVF cells) gains from more
    index_threads: int = 0
    # search-time parameters of the bundle's index, replacing the ones it was tuned with
    # (IVF-Flat nprobe; IVF-PQ nprobe, k_factor; HNSW efSearch): latency against recall
    # without a rebuild
    index_search: dict[str, int] = field(default_factory=dict)

    @property
    def admitted_rpcs(self) -> int:
        """RPCs allowed to run at once: ``max_concurrent_rpcs``, or ``workers`` for 0."""
        return self.max_concurrent_rpcs or self.workers

    def validate(self) -> ServeConfig:
        object.__setattr__(self, "surfaces", tuple(self.surfaces))
        if not self.surfaces or not all(isinstance(x, str) and x for x in self.surfaces):
            raise ConfigError("[serve] surfaces: name at least one, as non-empty strings")
        for name in (
            "max_k",
            "candidates",
            "cap_per_value",
            "history_events",
            "workers",
            "processes",
        ):
            _positive("serve", name, getattr(self, name))
        for name in ("max_events_per_track", "onnx_threads"):
            _positive("serve", name, getattr(self, name))
        _one_of("serve", "page_policy", self.page_policy, ("fixed", "random", "bandit"))
        _positive("serve", "max_page_modules", self.max_page_modules)
        _positive("serve", "bandit_max_features", self.bandit_max_features)
        object.__setattr__(self, "bandit_features", tuple(self.bandit_features))
        _one_of(
            "serve",
            "bandit_exploration",
            self.bandit_exploration,
            ("epsilon", "softmax", "thompson"),
        )
        _one_of("serve", "bandit_learn_from", self.bandit_learn_from, ("served", "impressions"))
        if not 0.0 <= self.bandit_epsilon <= 1.0:
            raise ConfigError(
                f"[serve] bandit_epsilon: must be in [0, 1], got {self.bandit_epsilon}"
            )
        for name in (
            "bandit_temperature",
            "bandit_thompson_scale",
            "bandit_ridge",
            "page_log_days",
        ):
            if not 0.0 < getattr(self, name) < math.inf:
                raise ConfigError(f"[serve] {name}: must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.bandit_refresh_ms < math.inf:
            raise ConfigError(
                f"[serve] bandit_refresh_ms: must be >= 0, got {self.bandit_refresh_ms}"
            )
        for f in self.bandit_features:
            kind, _, name = str(f).partition(".")
            if not (f == "segment" or (kind in ("context", "profile") and name)):
                raise ConfigError(
                    f"[serve] bandit_features: {f!r} is not 'segment', 'context.FIELD' or "
                    "'profile.FIELD'"
                )
        if self.new_item_slots < 0:
            raise ConfigError(f"[serve] new_item_slots: must be >= 0, got {self.new_item_slots}")
        _positive("serve", "new_item_days", self.new_item_days)
        if self.hide_after_impressions < 0:
            raise ConfigError(
                f"[serve] hide_after_impressions: must be >= 0 (0: never), got "
                f"{self.hide_after_impressions}"
            )
        if self.max_concurrent_rpcs < 0:
            raise ConfigError(
                f"[serve] max_concurrent_rpcs: must be >= 0 (0: workers), got "
                f"{self.max_concurrent_rpcs}"
            )
        if self.max_concurrent_rpcs > self.workers:
            raise ConfigError(
                f"[serve] max_concurrent_rpcs ({self.max_concurrent_rpcs}) must be <= workers "
                f"({self.workers}): calls beyond the threads would wait in a queue"
            )
        if self.candidates < self.max_k:
            raise ConfigError(
                f"[serve] candidates ({self.candidates}) must be >= max_k ({self.max_k})"
            )
        _one_of("serve", "diversity", self.diversity, ("mmr", "category_cap", "none"))
        _one_of("serve", "consent_default", self.consent_default, ("granted", "denied"))
        object.__setattr__(self, "consent_purposes", tuple(self.consent_purposes))
        for i, purpose in enumerate(self.consent_purposes):
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", purpose):
                raise ConfigError(
                    f"[serve] consent_purposes[{i}]: {purpose!r} is not a purpose name "
                    "(lower case, digits, _)"
                )
        if self.consent_purposes and "personalization" not in self.consent_purposes:
            raise ConfigError(
                "[serve] consent_purposes: must include 'personalization' (what serving and "
                "keeping events depend on)"
            )
        if not 0.0 <= self.retention_days < math.inf:
            raise ConfigError(f"[serve] retention_days: must be >= 0, got {self.retention_days}")
        _positive("serve", "retention_check_minutes", self.retention_check_minutes)
        _one_of("serve", "clock", self.clock, ("wall", "bundle"))
        _one_of("serve", "onnx_device", self.onnx_device, ("auto", "cpu", "cuda"))
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ConfigError(f"[serve] mmr_lambda: must be in [0, 1], got {self.mmr_lambda}")
        if self.index_threads < 0:
            raise ConfigError(f"[serve] index_threads: must be >= 0, got {self.index_threads}")
        for name, value in self.index_search.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"[serve] index_search.{name}: must be a positive integer, got {value!r}"
                )
        if not self.reload_wait_seconds > 0:
            raise ConfigError(
                f"[serve] reload_wait_seconds: must be > 0, got {self.reload_wait_seconds}"
            )
        if self.watch_seconds < 0:
            raise ConfigError(f"[serve] watch_seconds: must be >= 0, got {self.watch_seconds}")
        if self.max_queue_ms < 0:
            raise ConfigError(
                f"[serve] max_queue_ms: must be >= 0 (0: no limit), got {self.max_queue_ms}"
            )
        for name in (
            "event_max_future_seconds",
            "event_max_age_days",
            "max_view_seconds",
            "state_timeout_seconds",
            "state_retry_seconds",
        ):
            _positive("serve", name, getattr(self, name))
        if not self.rating_min < self.rating_max:
            raise ConfigError(
                f"[serve] rating_min ({self.rating_min}) must be below rating_max "
                f"({self.rating_max})"
            )
        return self


def load_serve_config(
    path: Path | None = None, *, overrides: dict[str, Any] | None = None
) -> ServeConfig:
    """The [serve] table of the TOML file at ``path`` (the training tables may sit beside it,
    so one file may hold training and serving settings; any other table is refused), with
    ``overrides`` (None values ignored)."""
    where = str(path) if path is not None else "configuration"
    raw: dict[str, Any] = {}
    if path is not None:
        doc = _read_toml(path)
        _check_sections(doc, {*_SECTIONS, "serve"}, where)
        serve = doc.get("serve", {})
        if not isinstance(serve, dict):
            raise ConfigError(f"{where}: [serve] must be a table")
        raw = dict(serve)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg: ServeConfig = _build(ServeConfig, raw, "serve", where)
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "ranker": RankerConfig,
    "index": IndexConfig,
    "segments": SegmentsConfig,
    "privacy": PrivacyConfig,
}


def load_config(
    path: Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> Config:
    """Read a TOML file (or ``values``), apply ``overrides`` (``{"train.seed": 3}``, None
    values ignored), and validate. Raises ConfigError naming the file and key."""
    where = str(path) if path is not None else "configuration"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
        _check_sections(raw, {*_SECTIONS, "serve"}, where)
        raw.pop("serve", None)  # the serving tables are load_serve_config's
    if values:
        raw = {**raw, **values}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
    return from_dict(raw, where=where)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e


def _check_sections(raw: dict[str, Any], known: set[str], where: str) -> None:
    """A misspelled table (``[serv]``) would be silently ignored: refuse it."""
    if unknown := set(raw) - known:
        raise ConfigError(
            f"{where}: unknown section(s) {sorted(unknown)}; expected {sorted(known)}"
        )


def from_dict(raw: dict[str, Any], *, where: str = "configuration") -> Config:
    _check_sections(raw, set(_SECTIONS), where)
    sections = {
        name: _build(cls, raw.get(name, {}), name, where) for name, cls in _SECTIONS.items()
    }
    cfg = Config(**sections)
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# keys that once meant something and are read and ignored, so that the configuration saved in
# an older run directory or bundle still loads: (section, key) -> what replaced it
RETIRED_KEYS = {
    ("train", "num_workers"): "batches are gathered on the training device ([train] feed)",
}


def _build(cls: type, raw: Any, section: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if (section, key) in RETIRED_KEYS:
            continue
        if key not in names:
            raise ConfigError(
                f"{where}: [{section}] {key}: unknown key; known keys are {sorted(names)}"
            )
        kwargs[key] = _check_type(value, hints[key], f"{where}: [{section}] {key}")
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        if hint is float and not math.isfinite(value):  # TOML has nan and inf literals
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return value
    if origin is dict:
        _, vt = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: unexpected value {value!r}")
    return value


def _event_name(where: str, name: str) -> None:
    if not EVENT_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not an event type name (a letter, then up to 63 letters, "
            "digits, '_', '.', ':' or '-')"
        )


def _event_role(name: str, spec: dict[str, Any]) -> EventRole:
    where = f"[data] events.{name}"
    _event_name(where, name)
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: write {{ role = "positive", weight = 1.0 }} or similar')
    known = ("role", "weight", "min_value", "needs_value")
    for key in spec:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key; known keys are {list(known)}")
    role = spec.get("role")
    if role not in EVENT_ROLES:
        raise ConfigError(f"{where}.role: {role!r} is not one of {list(EVENT_ROLES)}")
    if role != "positive" and set(spec) - {"role"}:
        raise ConfigError(f"{where}: weight, min_value and needs_value apply to positives only")
    weight, least, needs = spec.get("weight", 1.0), spec.get("min_value"), spec.get("needs_value")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ConfigError(f"{where}.weight: must be a number > 0, got {weight!r}")
    if least is not None and (isinstance(least, bool) or not isinstance(least, int | float)):
        raise ConfigError(f"{where}.min_value: must be a number, got {least!r}")
    if needs is not None and not isinstance(needs, bool):
        raise ConfigError(f"{where}.needs_value: must be true or false, got {needs!r}")
    return EventRole(
        role,
        float(weight),
        None if least is None else float(least),
        bool(needs),
    )


def _positive(section: str, name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"[{section}] {name}: must be > 0, got {value}")


def _one_of(section: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"[{section}] {name}: {value!r} is not one of {list(allowed)}")
