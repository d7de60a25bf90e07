"""The edge: proto messages checked and turned into the domain's terms. Every problem is a
:class:`~tailored.serve.recommender.RequestError` naming the argument (the server answers
INVALID_ARGUMENT with it). User ids are pseudonymized here and nowhere else.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass

from tailored.config import ServeConfig
from tailored.serve.page import MODULE_TYPES, NEEDS_PARAM, ModuleSpec
from tailored.serve.page_learning import PageRef
from tailored.serve.recommender import RequestError
from tailored.serve.state import StoredEvent
from tailored.serve.v1 import personalization_pb2 as pb

__all__ = [
    "EVENT_NAMES",
    "RecommendArgs",
    "check_id",
    "parse_context",
    "parse_events",
    "parse_purposes",
]

MAX_ID = 256  # characters in a user or item id
MAX_EXCLUDE = 1000
MAX_MAP = 64  # entries in a profile or context map
_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,31}")
EVENT_NAMES = {
    pb.IMPRESSION: "impression",
    pb.CLICK: "click",
    pb.VIEW: "view",
    pb.RATING: "rating",
    pb.PURCHASE: "purchase",
}


def check_id(value: str, argument: str) -> str:
    """A site id: 1..256 characters, no control characters."""
    if not value:
        raise RequestError(argument, "required, got an empty string")
    if len(value) > MAX_ID:
        raise RequestError(argument, f"at most {MAX_ID} characters, got {len(value)}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise RequestError(argument, "contains control characters")
    return value


def _check_map(values: dict[str, str], argument: str) -> dict[str, str]:
    if len(values) > MAX_MAP:
        raise RequestError(argument, f"at most {MAX_MAP} entries, got {len(values)}")
    for key, value in values.items():
        check_id(key, f"{argument} key")
        if len(value) > MAX_ID:
            raise RequestError(f"{argument}[{key!r}]", f"at most {MAX_ID} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise RequestError(f"{argument}[{key!r}]", "contains control characters")
    return values


def parse_context(ctx: pb.Context, argument: str) -> dict[str, str]:
    """A request's context as field -> value (``device``, ``locale`` and the extras)."""
    if ctx.time_unix_ms < 0:
        raise RequestError(f"{argument}.time_unix_ms", f"must be >= 0, got {ctx.time_unix_ms}")
    context = dict(_check_map(dict(ctx.extra), f"{argument}.extra"))
    for name in ("device", "locale"):
        value = getattr(ctx, name)
        if len(value) > MAX_ID:
            raise RequestError(f"{argument}.{name}", f"at most {MAX_ID} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise RequestError(f"{argument}.{name}", "contains control characters")
        if value:
            context[name] = value
    return context


@dataclass(frozen=True)
class RecommendArgs:
    user_id: str
    k: int
    surface: str
    time_ms: int  # 0: the server's clock
    context: dict[str, str]
    exclude: frozenset[str]
    profile: dict[str, str]

    @classmethod
    def parse(cls, req: pb.RecommendRequest, cfg: ServeConfig) -> RecommendArgs:
        check_id(req.user_id, "user_id")
        if not 1 <= req.k <= cfg.max_k:
            raise RequestError("k", f"must be between 1 and {cfg.max_k}, got {req.k}")
        if req.surface not in cfg.surfaces:
            raise RequestError(
                "surface", f"unknown surface {req.surface!r}; known: {list(cfg.surfaces)}"
            )
        if len(req.exclude_item_ids) > MAX_EXCLUDE:
            raise RequestError("exclude_item_ids", f"at most {MAX_EXCLUDE} ids")
        for i, item in enumerate(req.exclude_item_ids):
            check_id(item, f"exclude_item_ids[{i}]")
        context = parse_context(req.context, "context")
        return cls(
            user_id=req.user_id,
            k=req.k,
            surface=req.surface,
            time_ms=req.context.time_unix_ms,
            context=context,
            exclude=frozenset(req.exclude_item_ids),
            profile=_check_map(dict(req.profile), "profile"),
        )


def parse_page(req: pb.PageRequest, cfg: ServeConfig) -> tuple[RecommendArgs, list[ModuleSpec]]:
    """A Page call's arguments, every one checked (INVALID_ARGUMENT names the first wrong
    one): the request as Recommend's (its surface the page type), and the modules."""
    check_id(req.user_id, "user_id")
    if req.page_type not in cfg.surfaces:
        raise RequestError(
            "page_type", f"unknown page type {req.page_type!r}; known: {list(cfg.surfaces)}"
        )
    if not 1 <= req.k <= cfg.max_k:
        raise RequestError("k", f"items per module must be between 1 and {cfg.max_k}, got {req.k}")
    if not req.modules:
        raise RequestError("modules", "no candidate modules: a page needs at least one")
    if len(req.modules) > cfg.max_page_modules:
        raise RequestError(
            "modules", f"at most {cfg.max_page_modules} modules, got {len(req.modules)}"
        )
    modules: list[ModuleSpec] = []
    ids: set[str] = set()
    for i, m in enumerate(req.modules):
        where = f"modules[{i}]"
        check_id(m.id, f"{where}.id")
        if m.id in ids:
            raise RequestError(f"{where}.id", f"{m.id!r} is given twice; module ids are unique")
        ids.add(m.id)
        if m.type not in MODULE_TYPES:
            shown = m.type if len(m.type) <= 40 else f"{m.type[:40]}..."
            raise RequestError(
                f"{where}.type", f"unknown module type {shown!r}; known: {list(MODULE_TYPES)}"
            )
        if m.type in NEEDS_PARAM:
            what = "an item id" if m.type == "similar" else "an item attribute value"
            if not m.param:
                raise RequestError(f"{where}.param", f"a {m.type} module needs {what}")
            check_id(m.param, f"{where}.param")
        elif m.param:
            raise RequestError(f"{where}.param", f"a {m.type} module takes no param")
        if len(m.title) > MAX_ID:
            raise RequestError(f"{where}.title", f"at most {MAX_ID} characters")
        modules.append(ModuleSpec(m.id, m.type, m.param, m.title))
    fake = pb.RecommendRequest(
        user_id=req.user_id,
        surface=req.page_type,
        k=req.k,
        context=req.context,
        exclude_item_ids=req.exclude_item_ids,
        profile=req.profile,
    )
    return RecommendArgs.parse(fake, cfg), modules  # page_type, the surface, checked above


def parse_events(
    req: pb.TrackRequest,
    cfg: ServeConfig,
    pseudonym: Callable[[str], str],
    now_ms: int,
    known_types: Collection[str] = (),
) -> tuple[dict[str, list[StoredEvent]], list[PageRef]]:
    """All events checked before any is stored; grouped by user pseudonym. With them, the
    events that name a page's module (checked against the page log by the server).
    ``known_types``: the names ``type_name`` may take besides the proto's own (the served
    bundle's configured event types)."""
    if not req.events:
        raise RequestError("events", "no events")
    if len(req.events) > cfg.max_events_per_track:
        raise RequestError(
            "events", f"at most {cfg.max_events_per_track} per call, got {len(req.events)}"
        )
    out: dict[str, list[StoredEvent]] = {}
    refs: list[PageRef] = []
    for i, e in enumerate(req.events):
        where = f"events[{i}]"
        check_id(e.user_id, f"{where}.user_id")
        check_id(e.item_id, f"{where}.item_id")
        name = _event_type(e, known_types, where)
        _check_event_time(e.time_unix_ms, now_ms, cfg, f"{where}.time_unix_ms")
        _check_event_value(name, e.value, cfg, f"{where}.value")
        if e.surface and e.surface not in cfg.surfaces:
            shown = e.surface if len(e.surface) <= 40 else f"{e.surface[:40]}..."
            raise RequestError(
                f"{where}.surface", f"unknown surface {shown!r}; known: {list(cfg.surfaces)}"
            )
        parse_context(e.context, f"{where}.context")
        if e.module and not e.request_id:
            raise RequestError(
                f"{where}.request_id", "a module is named: the page's request_id is needed too"
            )
        if e.request_id:
            check_id(e.request_id, f"{where}.request_id")
        if e.module:
            check_id(e.module, f"{where}.module")
            refs.append(
                PageRef(where, pseudonym(e.user_id), e.request_id, e.module, e.item_id, name)
            )
        stored = StoredEvent(
            item_id=e.item_id,
            type=name,
            time_ms=e.time_unix_ms or now_ms,
            value=float(e.value),
            surface=e.surface,
        )
        out.setdefault(pseudonym(e.user_id), []).append(stored)
    return out, refs


def _event_type(e: pb.Event, known: Collection[str], where: str) -> str:
    """The event's type name: ``type`` (the proto's own), or ``type_name`` (any the served
    bundle's configuration names)."""
    if not e.type_name:
        name = EVENT_NAMES.get(e.type)
        if name is None:
            raise RequestError(
                f"{where}.type",
                f"must be one of {sorted(EVENT_NAMES.values())}, or give type_name",
            )
        return name
    if e.type != pb.EVENT_TYPE_UNSPECIFIED:
        raise RequestError(f"{where}.type_name", "give type or type_name, not both")
    if e.type_name in EVENT_NAMES.values() or e.type_name in known:
        return e.type_name
    shown = e.type_name if len(e.type_name) <= 40 else f"{e.type_name[:40]}..."
    raise RequestError(
        f"{where}.type_name",
        f"{shown!r} is not an event type of the served bundle; it knows "
        f"{sorted({*EVENT_NAMES.values(), *known})} (name a new one in the training "
        'configuration\'s [data.events], with role "ignored" to keep it unused)',
    )


def _check_event_time(time_ms: int, now_ms: int, cfg: ServeConfig, where: str) -> None:
    """0 (the server's clock), or within the window around the serving clock."""
    if time_ms == 0:
        return
    if time_ms < 0:
        raise RequestError(where, f"must be >= 0, got {time_ms}")
    ahead_ms = int(cfg.event_max_future_seconds * 1000)
    if time_ms > now_ms + ahead_ms:
        raise RequestError(
            where,
            f"{time_ms} is more than {cfg.event_max_future_seconds:g} s ahead of the server's "
            f"clock ({now_ms}); times are milliseconds since 1970 (not seconds or nanoseconds)",
        )
    oldest_ms = now_ms - int(cfg.event_max_age_days * 86_400_000)
    if time_ms < oldest_ms:
        raise RequestError(
            where,
            f"{time_ms} is more than {cfg.event_max_age_days:g} days before the server's clock "
            f"({now_ms}); times are milliseconds since 1970, and older events belong in a "
            "dataset import",
        )


def _check_event_value(name: str, value: float, cfg: ServeConfig, where: str) -> None:
    """What the value means for this event type: a rating, dwell seconds, an amount."""
    if not math.isfinite(value):
        raise RequestError(where, f"must be a finite number, got {value}")
    if name == "rating" and not cfg.rating_min <= value <= cfg.rating_max:
        raise RequestError(
            where, f"a rating must be in [{cfg.rating_min:g}, {cfg.rating_max:g}], got {value:g}"
        )
    if name == "view" and not 0 <= value <= cfg.max_view_seconds:
        raise RequestError(
            where, f"dwell seconds must be in [0, {cfg.max_view_seconds:g}], got {value:g}"
        )
    if name == "purchase" and value < 0:
        raise RequestError(where, f"a purchase amount must be >= 0, got {value:g}")


def parse_purposes(purposes: list[str]) -> frozenset[str]:
    if len(purposes) > 16:
        raise RequestError("purposes", f"at most 16, got {len(purposes)}")
    for i, p in enumerate(purposes):
        if not _PURPOSE.fullmatch(p):
            raise RequestError(
                f"purposes[{i}]", f"{p!r} is not a purpose name (lower case, digits, _)"
            )
    return frozenset(purposes)
