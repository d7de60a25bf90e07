from __future__ import annotations

from pathlib import Path

import pytest

from tailored.config import load_config
from tailored.errors import ConfigError
from tests.helpers import ROOT


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.dim > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[model]\ndimm = 3\n", "[model] dimm: unknown key"),
        ("[model]\ndim = -3\n", "[model] dim: must be > 0, got -3"),
        ("[train]\nlr = 'fast'\n", "[train] lr: expected float, got 'fast'"),
        ("[train]\nfinal_eval_users = -1\n", "[train] final_eval_users: must be >= 0, got -1"),
        ("[train]\nprecision = 'fp8'\n", "[train] precision: 'fp8' is not one of"),
        ("[data]\nsplit = 'random'\n", "[data] split: 'random' is not one of"),
        ("[index]\nkind = 'annoy'\n", "[index] kind: 'annoy' is not one of"),
        (
            '[data]\npositive_events = { "add to cart" = 1.0 }\n',
            "[data] positive_events.add to cart: 'add to cart' is not an event type name",
        ),
        ("[data.events]\nhide = { role = 'veto' }\n", "[data] events.hide.role: 'veto' is not"),
        (
            "[data.events]\nhide = { role = 'negative', weight = 2.0 }\n",
            "[data] events.hide: weight, min_value and needs_value apply to positives only",
        ),
        (
            "[data.events]\nimpression = { role = 'exposure' }\n",
            "[data] events: name at least one event type with role 'positive'",
        ),
        (
            "[data]\nmin_rating = 3.0\n[data.events]\nrating = { role = 'positive' }\n",
            "[data] min_rating: give either [data.events] or min_rating",
        ),
        ("[serving]\nport = 1\n", "unknown section(s) ['serving']"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_every_index_kind_is_accepted() -> None:
    from tailored.retrieval.choose import _KINDS

    for kind in ("auto", *_KINDS):
        assert load_config(values={"index": {"kind": kind}}).index.kind == kind


def test_overrides_apply_and_none_is_ignored() -> None:
    cfg = load_config(
        values={"train": {"seed": 1}}, overrides={"train.seed": 7, "train.devices": None}
    )
    assert cfg.train.seed == 7 and cfg.train.devices == 1


def test_serve_config_defaults_validate_and_bad_values_name_the_key() -> None:
    from tailored.config import load_serve_config

    cfg = load_serve_config()
    assert cfg.index_threads == 0 and cfg.surfaces == ("home", "item", "search")
    for key, value, words in [
        ("index_threads", -1, "index_threads: must be >= 0"),
        ("max_k", 0, "max_k: must be > 0"),
        ("diversity", "random", "diversity"),
        ("candidates", 5, r"candidates \(5\) must be >= max_k"),
        ("index_search", {"nprobe": 0}, "index_search.nprobe: must be a positive integer"),
        ("processes", 0, "processes: must be > 0"),
        ("reload_wait_seconds", 0, "reload_wait_seconds: must be > 0"),
        ("page_policy", "greedy", "page_policy"),
        ("bandit_exploration", "ucb", "bandit_exploration"),
        ("bandit_epsilon", 1.5, r"bandit_epsilon: must be in \[0, 1\]"),
        ("bandit_ridge", 0, "bandit_ridge: must be > 0"),
        ("page_log_days", 0, "page_log_days: must be > 0"),
        ("bandit_learn_from", "views", "bandit_learn_from"),
        ("bandit_features", ["segment", "device"], "'device' is not 'segment'"),
        ("onnx_device", "gpu", r"\[serve\] onnx_device: 'gpu' is not one of"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_serve_config(overrides={key: value})


def test_onnx_device_is_auto_by_default_and_cuda_is_checked_when_a_bundle_loads() -> None:
    """The file is read the same on any machine (``tailored privacy enforce`` reads a serving
    configuration on hosts without a GPU); whether CUDA can run the models is asked of
    onnxruntime where the models load (tests/serve/test_onnx_device.py)."""
    from tailored.config import load_serve_config

    assert load_serve_config().onnx_device == "auto"
    for device in ("auto", "cpu", "cuda"):
        assert load_serve_config(overrides={"onnx_device": device}).onnx_device == device


@pytest.mark.parametrize("key", ["lists_per_user", "ensemble"])
def test_ranker_lists_and_members_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[ranker\] {key}: must be > 0"):
        load_config(values={"ranker": {key: 0}})


def test_ranker_loss_is_one_of_the_known() -> None:
    assert load_config(values={"ranker": {"loss": "lambdarank"}}).ranker.loss == "lambdarank"
    with pytest.raises(ConfigError, match=r"\[ranker\] loss: 'hinge' is not one of"):
        load_config(values={"ranker": {"loss": "hinge"}})


def test_ranker_item_item_model_settings() -> None:
    assert load_config(values={"ranker": {"ease_items": 0}}).ranker.ease_items == 0  # off
    for bad in (-1, 40_000):
        with pytest.raises(ConfigError, match=rf"\[ranker\] ease_items: must be in .* got {bad}"):
            load_config(values={"ranker": {"ease_items": bad}})
    with pytest.raises(ConfigError, match=r"\[ranker\] ease_l2: must be > 0"):
        load_config(values={"ranker": {"ease_l2": 0.0}})


def test_event_types_are_names_with_roles_and_the_legacy_keys_mean_what_they_meant() -> None:
    from tailored.config import EventRole

    legacy = load_config(values={"data": {"positive_events": {"click": 1.0, "view": 2.0}}})
    assert legacy.data.event_roles() == {
        "impression": EventRole("exposure"),
        "click": EventRole("positive", 1.0),
        "view": EventRole("positive", 2.0, 30.0, True),  # a view counts from 30 s of dwell
    }
    events = {
        "click": {"role": "positive", "min_value": 5},
        "add_to_cart": {"role": "positive", "weight": 2},
        "impression": {"role": "exposure"},
        "hide": {"role": "negative"},
        "share": {"role": "ignored"},
    }
    roles = load_config(values={"data": {"events": events}}).data.event_roles()
    assert roles["add_to_cart"] == EventRole("positive", 2.0)
    assert roles["hide"].role == "negative" and not roles["hide"].counts(None)
    # a click with 3 s of dwell is no positive; one with 8 s is, and so is one with no dwell
    assert [roles["click"].counts(v) for v in (3.0, 8.0, None, float("nan"))] == [
        False,
        True,
        True,
        True,
    ]


def test_the_learning_rate_scales_with_the_global_batch() -> None:
    base = ROOT / "configs" / "movielens-100k.toml"
    plain = load_config(base, overrides={"train.lr": 1e-3, "train.batch_size": 8192})
    assert plain.train.scaled_lr == 1e-3  # no scaling unless asked
    scaled = {"train.lr": 1e-3, "train.lr_reference_batch": 1024, "train.batch_size": 8192}
    linear = load_config(base, overrides={**scaled, "train.lr_scaling": "linear"})
    assert linear.train.scaled_lr == pytest.approx(8e-3)
    sqrt = load_config(base, overrides={**scaled, "train.lr_scaling": "sqrt", "train.devices": 2})
    assert sqrt.train.global_batch == 16384 and sqrt.train.scaled_lr == pytest.approx(4e-3)
    with pytest.raises(ConfigError, match="lr_reference_batch"):
        load_config(base, overrides={"train.lr_scaling": "linear"})
    with pytest.raises(ConfigError, match="lr_scaling"):
        load_config(base, overrides={"train.lr_scaling": "cubic", "train.lr_reference_batch": 8})
    with pytest.raises(ConfigError, match="feed"):
        load_config(base, overrides={"train.feed": "gpu"})


def test_a_retired_key_of_an_older_run_still_loads() -> None:
    # run directories and bundles saved before [train] feed carry [train] num_workers
    cfg = load_config(values={"train": {"num_workers": 4, "seed": 2}})
    assert cfg.train.seed == 2 and not hasattr(cfg.train, "num_workers")
