from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    IMPRESSION: _ClassVar[EventType]
    CLICK: _ClassVar[EventType]
    VIEW: _ClassVar[EventType]
    RATING: _ClassVar[EventType]
    PURCHASE: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
IMPRESSION: EventType
CLICK: EventType
VIEW: EventType
RATING: EventType
PURCHASE: EventType

class Context(_message.Message):
    __slots__ = ("device", "locale", "time_unix_ms", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    device: str
    locale: str
    time_unix_ms: int
    extra: _containers.ScalarMap[str, str]
    def __init__(self, device: _Optional[str] = ..., locale: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "surface", "k", "context", "exclude_item_ids", "profile")
    class ProfileEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    surface: str
    k: int
    context: Context
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    profile: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., surface: _Optional[str] = ..., k: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., profile: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: str
    title: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "bundle_version", "request_id", "strategy", "degraded", "assignments")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    bundle_version: str
    request_id: str
    strategy: str
    degraded: bool
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., request_id: _Optional[str] = ..., strategy: _Optional[str] = ..., degraded: _Optional[bool] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("experiment", "variant")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    variant: str
    def __init__(self, experiment: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class PageModule(_message.Message):
    __slots__ = ("id", "type", "param", "title")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAM_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    param: str
    title: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., param: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class PageRequest(_message.Message):
    __slots__ = ("user_id", "page_type", "modules", "k", "context", "exclude_item_ids", "profile")
    class ProfileEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_type: str
    modules: _containers.RepeatedCompositeFieldContainer[PageModule]
    k: int
    context: Context
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    profile: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., page_type: _Optional[str] = ..., modules: _Optional[_Iterable[_Union[PageModule, _Mapping]]] = ..., k: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., profile: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PageModuleResult(_message.Message):
    __slots__ = ("id", "type", "title", "items", "position", "propensity")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    title: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    position: int
    propensity: float
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., title: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ...) -> None: ...

class PageResponse(_message.Message):
    __slots__ = ("modules", "request_id", "bundle_version", "policy", "strategy", "degraded", "assignments")
    MODULES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    modules: _containers.RepeatedCompositeFieldContainer[PageModuleResult]
    request_id: str
    bundle_version: str
    policy: str
    strategy: str
    degraded: bool
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, modules: _Optional[_Iterable[_Union[PageModuleResult, _Mapping]]] = ..., request_id: _Optional[str] = ..., bundle_version: _Optional[str] = ..., policy: _Optional[str] = ..., strategy: _Optional[str] = ..., degraded: _Optional[bool] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "type", "time_unix_ms", "value", "surface", "context", "request_id", "module", "type_name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    type: EventType
    time_unix_ms: int
    value: float
    surface: str
    context: Context
    request_id: str
    module: str
    type_name: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., time_unix_ms: _Optional[int] = ..., value: _Optional[float] = ..., surface: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., request_id: _Optional[str] = ..., module: _Optional[str] = ..., type_name: _Optional[str] = ...) -> None: ...

class TrackRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("accepted", "dropped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class SetConsentRequest(_message.Message):
    __slots__ = ("user_id", "purposes")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ...) -> None: ...

class SetConsentResponse(_message.Message):
    __slots__ = ("purposes", "events_forgotten")
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    purposes: _containers.RepeatedScalarFieldContainer[str]
    events_forgotten: int
    def __init__(self, purposes: _Optional[_Iterable[str]] = ..., events_forgotten: _Optional[int] = ...) -> None: ...

class ReloadBundleRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ReloadBundleResponse(_message.Message):
    __slots__ = ("bundle_version", "previous_version", "load_seconds")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    previous_version: str
    load_seconds: float
    def __init__(self, bundle_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("bundle_version", "bundle_path", "items", "users", "index_kind", "ranker", "state_backend", "uptime_seconds", "reloads", "failed_reloads", "surfaces", "worker", "workers", "pid", "index_search", "index_recall", "index_search_ms", "index_search_source", "now_unix_ms", "onnx_provider", "index_device")
    class IndexSearchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PATH_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    RANKER_FIELD_NUMBER: _ClassVar[int]
    STATE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RELOADS_FIELD_NUMBER: _ClassVar[int]
    FAILED_RELOADS_FIELD_NUMBER: _ClassVar[int]
    SURFACES_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    INDEX_SEARCH_FIELD_NUMBER: _ClassVar[int]
    INDEX_RECALL_FIELD_NUMBER: _ClassVar[int]
    INDEX_SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    INDEX_SEARCH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    NOW_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ONNX_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INDEX_DEVICE_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    bundle_path: str
    items: int
    users: int
    index_kind: str
    ranker: bool
    state_backend: str
    uptime_seconds: float
    reloads: int
    failed_reloads: int
    surfaces: _containers.RepeatedScalarFieldContainer[str]
    worker: int
    workers: int
    pid: int
    index_search: _containers.ScalarMap[str, int]
    index_recall: float
    index_search_ms: float
    index_search_source: str
    now_unix_ms: int
    onnx_provider: str
    index_device: str
    def __init__(self, bundle_version: _Optional[str] = ..., bundle_path: _Optional[str] = ..., items: _Optional[int] = ..., users: _Optional[int] = ..., index_kind: _Optional[str] = ..., ranker: _Optional[bool] = ..., state_backend: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., reloads: _Optional[int] = ..., failed_reloads: _Optional[int] = ..., surfaces: _Optional[_Iterable[str]] = ..., worker: _Optional[int] = ..., workers: _Optional[int] = ..., pid: _Optional[int] = ..., index_search: _Optional[_Mapping[str, int]] = ..., index_recall: _Optional[float] = ..., index_search_ms: _Optional[float] = ..., index_search_source: _Optional[str] = ..., now_unix_ms: _Optional[int] = ..., onnx_provider: _Optional[str] = ..., index_device: _Optional[str] = ...) -> None: ...

class SetItemAvailabilityRequest(_message.Message):
    __slots__ = ("item_ids", "available")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ...) -> None: ...

class SetItemAvailabilityResponse(_message.Message):
    __slots__ = ("unavailable_total",)
    UNAVAILABLE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    unavailable_total: int
    def __init__(self, unavailable_total: _Optional[int] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("pseudonym", "held", "removed", "failed")
    class RemovedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    pseudonym: str
    held: bool
    removed: _containers.ScalarMap[str, int]
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pseudonym: _Optional[str] = ..., held: _Optional[bool] = ..., removed: _Optional[_Mapping[str, int]] = ..., failed: _Optional[_Iterable[str]] = ...) -> None: ...

class ReloadExperimentsRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ReloadExperimentsResponse(_message.Message):
    __slots__ = ("running", "experiments", "bundles")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    running: _containers.RepeatedScalarFieldContainer[str]
    experiments: int
    bundles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, running: _Optional[_Iterable[str]] = ..., experiments: _Optional[int] = ..., bundles: _Optional[_Iterable[str]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("experiment", "variant", "reason")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    variant: str
    reason: str
    def __init__(self, experiment: _Optional[str] = ..., variant: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("bundle_version", "defaults", "running")
    class DefaultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    defaults: _containers.ScalarMap[str, str]
    running: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bundle_version: _Optional[str] = ..., defaults: _Optional[_Mapping[str, str]] = ..., running: _Optional[_Iterable[str]] = ...) -> None: ...
