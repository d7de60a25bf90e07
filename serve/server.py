"""The gRPC server: ``tailored.v1.Personalization`` (Recommend, Page, Track, SetConsent) and
``tailored.v1.Admin`` (ReloadBundle, ReloadExperiments, Promote, Status, SetItemAvailability,
Forget;
bearer token), next to the standard health and reflection services.

:func:`create_server` builds a server on an address (port 0: any free port) for a
:class:`Service`; tests start it on loopback and talk to it over a real channel. Domain errors
become status codes in one place (:func:`_rpc`); each RPC is counted and timed there.
Overload is refused: beyond ``max_concurrent_rpcs`` running calls, one more is answered
RESOURCE_EXHAUSTED and counted (:mod:`tailored.serve.admission`). No raw user id is logged:
ids are pseudonymized at the edge.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tailored.bundle.format import BundleError
from tailored.config import ServeConfig
from tailored.data.pseudonym import Pseudonymizer
from tailored.errors import TailoredError
from tailored.experiments import Assignment, DecisionRefused, decide
from tailored.privacy.erasure import failures
from tailored.serve.admission import Admission, TimedPool
from tailored.serve.bundles import LiveBundle
from tailored.serve.edge import (
    RecommendArgs,
    check_id,
    parse_events,
    parse_page,
    parse_purposes,
)
from tailored.serve.erasure import Eraser
from tailored.serve.experiments import ExposureWriter, ServedExperiments, load_served
from tailored.serve.guard import StateGuard
from tailored.serve.metrics import ServerMetrics
from tailored.serve.page import build_page, page_features
from tailored.serve.page_learning import PageLearner, new_request_id
from tailored.serve.recommender import Recommender, Request, RequestError
from tailored.serve.state import PERSONALIZATION, OnlineState, PageLog, StateError, StoredEvent
from tailored.serve.v1 import personalization_pb2 as pb
from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc
from tailored.serve.workers import Siblings

__all__ = ["SERVICE_NAMES", "Service", "create_server"]

_log = logging.getLogger(__name__)
# the health entry of the online state: NOT_SERVING while it is unreachable (Recommend still
# answers, degraded; "" stays SERVING so that a load balancer keeps the replica)
STATE_HEALTH = "tailored.online_state"
_BACKSTOP_RPCS = 10_000  # calls inside gRPC at once, refusals being answered included
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Personalization"].full_name,
    pb.DESCRIPTOR.services_by_name["Admin"].full_name,
)
_UNAVAILABLE_TTL = 1.0  # seconds the unavailable-items set is cached per server
_FLUSH_SECONDS = 1.0  # Forget waits this long at most for this process's pending writes

_Msg = TypeVar("_Msg")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Service:
    """What the servicers share: the live bundle, the online state, the key, the metrics."""

    def __init__(
        self,
        bundle: LiveBundle,
        state: OnlineState,
        pseudonymizer: Pseudonymizer,
        cfg: ServeConfig,
        *,
        admin_token: str | None = None,
        metrics: ServerMetrics | None = None,
        siblings: Siblings | None = None,
    ) -> None:
        self.bundle = bundle
        self.siblings = siblings  # the other processes on this address, if any
        self.state = state
        self.pseudonym = pseudonymizer
        self.cfg = cfg
        token = admin_token if admin_token is not None else os.environ.get(cfg.admin_token_env)
        self.admin_token = token or None
        self.metrics = metrics or ServerMetrics()
        self.admission = Admission(
            cfg.admitted_rpcs,
            SERVICE_NAMES,
            self.metrics.count,
            max_queue_seconds=cfg.max_queue_ms / 1e3,
        )
        self.guard = StateGuard(cfg.state_retry_seconds, self._state_changed)
        self.health: health.HealthServicer | None = None  # set by create_server
        self.metrics.set_bundle(bundle.version)
        bundle.on_swap = self._swapped  # reloads, the watcher and siblings alike
        self.started = time.time()
        self.experiments: ServedExperiments | None = None
        self.experiments_lock = threading.Lock()  # a load and its set, one at a time
        self.exposures = ExposureWriter(
            lambda batch: self.guard.call(
                self.state.record, batch, default_allows=self.default_allows()
            ),
            lambda outcome, n: self.metrics.exposures.labels(outcome).inc(n),
        )
        self.pages = PageLearner(
            state,
            cfg,
            self.guard.call,
            lambda outcome, n: self.metrics.pages_logged.labels(outcome).inc(n),
        )
        first = siblings is None or siblings.me.index == 0  # one process enforces retention
        self.eraser = Eraser(
            bundle.source if cfg.erase_bundle_rows else None,
            erased=lambda reason, n: self.metrics.erasures.labels(reason).inc(n),
            retention=(state, cfg.retention_days, cfg.retention_check_minutes * 60)
            if cfg.retention_days > 0 and first
            else None,
        )
        if cfg.experiments:
            self.set_experiments(self.load_experiments(cfg.experiments))
        self._unavailable: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._lock = threading.Lock()
        fingerprint = bundle.current.bundle.manifest.data.get("key_fingerprint")
        if fingerprint and fingerprint != pseudonymizer.fingerprint:
            raise TailoredError(
                "the pseudonymization key differs from the one the bundle's data was written "
                "with (fingerprints differ): known users would look new; serve with the "
                "dataset's key (TAILORED_PSEUDONYM_KEY or $TAILORED_HOME/pseudonym.key)"
            )

    def _swapped(self, version: str) -> None:
        self.metrics.set_bundle(version)
        self.eraser.sweep_soon()  # a version built while an erasure ran may hold the user

    def load_experiments(self, path: str) -> ServedExperiments:
        """Check the experiments file at ``path`` and load the bundles its variants name,
        beside the served bundle (:func:`tailored.serve.experiments.load_served`; those
        loaded for the running configuration are kept, not loaded again)."""
        current = self.bundle.current
        before = self.experiments.bundles if self.experiments is not None else None
        return load_served(path, current.bundle.manifest.path.parent, self.cfg, current, before)

    def set_experiments(self, served: ServedExperiments | None) -> None:
        """Run ``served`` from the next request on; the bundle watcher leaves the versions
        its variants serve, and those that lost a decision, alone."""
        self.experiments = served
        self.bundle.reserved = served.experiments.reserved() if served is not None else frozenset()

    def follow_experiments(self, path: str) -> ServedExperiments:
        """Run the experiments file at ``path`` with its decisions, loaded and set under one
        lock, so that of two reloads (an admin call's, a sibling's) the later load is the
        one that stays. What a sibling's ``ReloadExperiments`` or ``Promote`` asks of this
        process too. Raises TailoredError and keeps the running configuration when it
        cannot."""
        with self.experiments_lock:
            served = self.load_experiments(path)
            self.set_experiments(served)
            return served

    @property
    def defaults(self) -> dict[str, Any]:
        """What promoted variants changed, for everyone (a variant's own changes win)."""
        return self.experiments.defaults if self.experiments is not None else {}

    def now(self) -> float:
        """The serving clock, unix seconds (see [serve] clock)."""
        if self.cfg.clock == "bundle":  # one second after the bundle's data ends, then on
            return self.bundle.current.bundle.last_event_time + 1 + (time.time() - self.started)
        return time.time()

    def unavailable(self) -> frozenset[str]:
        """The items marked unavailable (cached briefly); the last known set while the online
        state is unreachable."""
        at, items = self._unavailable
        if time.monotonic() - at > _UNAVAILABLE_TTL:
            try:
                items = self.guard.call(self.state.unavailable)
            except StateError:
                return items
            self._unavailable = (time.monotonic(), items)
        return items

    def _state_changed(self, up: bool) -> None:
        """The online state became unreachable, or reachable again."""
        if up:
            _log.warning("online state (%s) reachable again: serving in full", self.state.backend)
        else:
            _log.error(
                "online state (%s) unreachable: Recommend answers degraded, Track UNAVAILABLE",
                self.state.backend,
            )
        self.metrics.state_up.set(1 if up else 0)
        if self.health is not None:
            status = health_pb2.HealthCheckResponse
            self.health.set(STATE_HEALTH, status.SERVING if up else status.NOT_SERVING)

    def default_allows(self) -> bool:
        return self.cfg.consent_default == "granted"

    def close(self) -> None:
        self.bundle.close()
        self.exposures.close()  # what requests handed over is written before the state closes
        self.pages.close()
        self.eraser.close()
        self.state.close()


class LogLimit:
    """At most one log line per ``seconds`` for each key: :meth:`due` answers how many were
    held back since the last one when a line is due, else ``None`` (an outage fails every
    call, and a line per call would flood the log)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def due(self, key: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            at, held = self._last.get(key, (-math.inf, 0))
            if now - at >= self.seconds:
                self._last[key] = (now, 0)
                return held
            self._last[key] = (at, held + 1)
            return None


_STATE_ERRORS = LogLimit()


def _rpc(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Count and time the RPC, and turn domain errors into status codes."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return fn(self, request, context)
            except _Abort as e:
                code, message = e.code, str(e)
            except RequestError as e:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
            except BundleError as e:
                code, message = grpc.StatusCode.FAILED_PRECONDITION, str(e)
            except StateError as e:  # the online state is unreachable or failed: retry later
                held_back = _STATE_ERRORS.due(method)
                if held_back is not None:  # one line per method every few seconds, not per call
                    _log.error("%s failed: %s (and %d more since the last)", method, e, held_back)
                code, message = grpc.StatusCode.UNAVAILABLE, str(e)
            except Exception:
                _log.exception("%s failed", method)  # the request is not logged: it has ids
                code, message = grpc.StatusCode.INTERNAL, "internal error"
            finally:
                self.service.metrics.observe(method, code.name, time.perf_counter() - start)
            context.abort(code, message)

        return handler

    return wrap


def _log_exposures(
    s: Service,
    experiments: ServedExperiments,
    user: str,
    assigned: tuple[Assignment, ...],
    events: tuple[StoredEvent, ...],
    now: float,
    surface: str,
) -> None:
    """Hand the user's first exposure to each experiment they are served under to the
    writer thread; a state that fails there fails no request (the exposure is written on a
    later one)."""
    new = experiments.exposures(user, assigned, events, int(now * 1000), surface)
    if new:
        s.exposures.put(user, new, lambda: experiments.forget_written(user, assigned))


def _check_deadline(context: grpc.ServicerContext, stage: str) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed before {stage}")


@dataclass(frozen=True)
class _Prepared:
    rec: Recommender  # the bundle this request is answered from (a variant's, perhaps)
    request: Request
    assigned: tuple[Assignment, ...]
    degraded: bool  # the online state could not be read


class _Personalization(pb_grpc.PersonalizationServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    def _prepare(self, args: RecommendArgs, method: str) -> _Prepared:
        """What Recommend and Page share: the user's state and consent, their experiments
        (exposures logged), the bundle and the request as the recommender reads it."""
        s = self.service
        rec = s.bundle.current  # this request finishes on this bundle, whatever swaps
        user = s.pseudonym(args.user_id)
        try:
            state = s.guard.call(s.state.user, user, s.cfg.history_events)
        except StateError:  # degrade: consent unknown, so personalized for no one
            state = None
            s.metrics.degraded.labels(method).inc()
        personalized = state is not None and state.allows(
            PERSONALIZATION, default=s.default_allows()
        )
        now = s.now()
        experiments = s.experiments  # one configuration for the whole request
        assigned: tuple[Assignment, ...] = ()
        changes: dict[str, Any] = dict(experiments.defaults) if experiments is not None else {}
        if experiments is not None and personalized and state is not None:
            # without consent: the control experience (the configured one), counted nowhere.
            # The request's time (a simulation's, a replay's; never ahead of the server's
            # clock) decides which experiments run and stamps the exposure
            seen_at = args.time_ms / 1000 if 0 < args.time_ms <= now * 1000 else now
            assigned = experiments.assign(user, seen_at)
            changes.update(experiments.changes(assigned))
            rec = experiments.recommender(changes, rec)
            _log_exposures(s, experiments, user, assigned, state.events, seen_at, args.surface)
        request = Request(
            user=user,
            k=args.k,
            surface=args.surface,
            time=args.time_ms / 1000 if args.time_ms else now,
            personalized=personalized,
            context=args.context,
            exclude=args.exclude,
            profile=args.profile,
            online=state.events if personalized and state is not None else (),
            variant=changes,
            bundle_rows=state is not None and not state.forgotten,
        )
        return _Prepared(rec, request, assigned, state is None)

    @_rpc("Recommend")
    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        s = self.service
        args = RecommendArgs.parse(request, s.cfg)
        prepared = self._prepare(args, "Recommend")
        rec, assigned = prepared.rec, prepared.assigned
        _check_deadline(context, "ranking")
        result = rec.recommend(prepared.request, s.unavailable())
        _check_deadline(context, "answering")
        return pb.RecommendResponse(
            items=[
                pb.RecommendedItem(item_id=i, score=sc, reason=r, title=t)
                for i, sc, r, t in zip(
                    result.item_ids, result.scores, result.reasons, result.titles, strict=True
                )
            ],
            bundle_version=rec.bundle.version,
            request_id=uuid.uuid4().hex,
            strategy=result.strategy,
            degraded=prepared.degraded,
            assignments=[
                pb.Assignment(experiment=a.experiment, variant=a.variant) for a in assigned
            ],
        )

    @_rpc("Page")
    def Page(self, request: pb.PageRequest, context: grpc.ServicerContext) -> pb.PageResponse:
        s = self.service
        args, modules = parse_page(request, s.cfg)
        prepared = self._prepare(args, "Page")
        req, variant = prepared.request, prepared.request.variant
        policy = str(variant.get("page_policy", s.cfg.page_policy))
        features = page_features(prepared.rec, req, s.cfg.bandit_features)
        bandit = s.pages.bandit(args.surface) if policy == "bandit" else None
        _check_deadline(context, "ranking")
        page = build_page(
            prepared.rec,
            req,
            modules,
            policy=policy,
            unavailable=s.unavailable(),
            before_module=lambda module: _check_deadline(context, f"module {module}"),
            bandit=bandit,
            features=features,
        )
        _check_deadline(context, "answering")
        request_id = new_request_id()
        if not prepared.degraded:
            s.pages.log(
                PageLog(
                    request_id=request_id,
                    user=req.user if req.personalized else "",
                    time_ms=int(req.time * 1000),
                    page_type=args.surface,
                    policy=policy,
                    learn=req.personalized and bool(variant.get("page_learn", s.cfg.bandit_learn)),
                    context=features,
                    modules=page.decisions,
                    variants=tuple(f"{a.experiment}:{a.variant}" for a in prepared.assigned),
                    served_ms=int(time.time() * 1000),
                )
            )
        return pb.PageResponse(
            modules=[
                pb.PageModuleResult(
                    id=m.spec.id,
                    type=m.spec.type,
                    title=m.spec.title,
                    items=[
                        pb.RecommendedItem(item_id=i, score=sc, reason=r, title=t)
                        for i, sc, r, t in zip(
                            m.items.item_ids,
                            m.items.scores,
                            m.items.reasons,
                            m.items.titles,
                            strict=True,
                        )
                    ],
                    position=m.position,
                    propensity=m.propensity,
                )
                for m in page.modules
            ],
            request_id=request_id,
            bundle_version=prepared.rec.bundle.version,
            policy=page.policy,
            strategy=page.strategy,
            degraded=prepared.degraded,
            assignments=[
                pb.Assignment(experiment=a.experiment, variant=a.variant) for a in prepared.assigned
            ],
        )

    @_rpc("Track")
    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        s = self.service
        known = s.bundle.current.roles
        events, refs = parse_events(request, s.cfg, s.pseudonym, int(s.now() * 1000), known)
        checked, unknown = s.pages.check(refs) if refs else ([], 0)  # before anything is stored
        if unknown:
            s.metrics.page_feedback.labels("unknown_page").inc(unknown)
        _check_deadline(context, "storing")
        if checked:  # marked once each: a retry after a failure below teaches nothing twice
            marked, new = s.pages.feedback(checked)
            s.metrics.page_feedback.labels("true").inc(new)
            s.metrics.page_feedback.labels("false").inc(marked - new)
        # durable now; while the state is unreachable, UNAVAILABLE (nothing acknowledged)
        result = s.guard.call(s.state.record, events, default_allows=s.default_allows())
        s.metrics.events.labels("accepted").inc(result.accepted)
        s.metrics.events.labels("dropped").inc(result.dropped)
        return pb.TrackResponse(accepted=result.accepted, dropped=result.dropped)

    @_rpc("SetConsent")
    def SetConsent(
        self, request: pb.SetConsentRequest, context: grpc.ServicerContext
    ) -> pb.SetConsentResponse:
        s = self.service
        check_id(request.user_id, "user_id")
        purposes = parse_purposes(list(request.purposes))
        if s.cfg.consent_purposes:
            for i, p in enumerate(request.purposes):
                if p not in s.cfg.consent_purposes:
                    raise RequestError(
                        f"purposes[{i}]",
                        f"{p!r} is not one of this site's purposes {list(s.cfg.consent_purposes)}",
                    )
        user = s.pseudonym(request.user_id)
        withdrawn = PERSONALIZATION not in purposes
        if withdrawn:  # their behavioural data goes everywhere: the tombstone first
            s.eraser.remember(user)
        forgotten = s.state.set_consent(user, purposes)
        if withdrawn:  # the bundles' rows and the audit record follow off the request path
            s.eraser.submit(user, "consent-withdrawal", s.state.store, {"events": forgotten})
        return pb.SetConsentResponse(purposes=sorted(purposes), events_forgotten=forgotten)


class _Admin(pb_grpc.AdminServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    def _authorize(self, context: grpc.ServicerContext) -> None:
        token = self.service.admin_token
        if token is None:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the admin service is disabled: set {self.service.cfg.admin_token_env}",
            )
        meta = dict(context.invocation_metadata())
        header = str(meta.get("authorization", ""))
        if not header.lower().startswith("bearer "):
            raise _Abort(
                grpc.StatusCode.UNAUTHENTICATED, "admin calls need 'authorization: Bearer TOKEN'"
            )
        if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, "wrong admin token")

    @_rpc("ReloadBundle")
    def ReloadBundle(
        self, request: pb.ReloadBundleRequest, context: grpc.ServicerContext
    ) -> pb.ReloadBundleResponse:
        self._authorize(context)
        new, old, seconds = self._serve_everywhere(
            Path(request.path) if request.path else None,
            lambda e: f"bundle refused, still serving: {e}",
            "call again to retry",
        )
        return pb.ReloadBundleResponse(
            bundle_version=new, previous_version=old, load_seconds=seconds
        )

    @_rpc("ReloadExperiments")
    def ReloadExperiments(
        self, request: pb.ReloadExperimentsRequest, context: grpc.ServicerContext
    ) -> pb.ReloadExperimentsResponse:
        self._authorize(context)
        s = self.service
        path = request.path or (s.experiments.path if s.experiments else "") or s.cfg.experiments
        if not path:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "path: no experiments file given, and the server was started without one",
            )
        try:
            served = s.follow_experiments(path)
        except TailoredError as e:  # the running configuration stays
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        self._tell_siblings(path, "ReloadExperiments")
        now = s.now()
        exps = served.experiments.experiments
        _log.info("experiments reloaded from %s: %d declared", path, len(exps))
        return pb.ReloadExperimentsResponse(
            running=[e.name for e in exps if e.running(now)],
            experiments=len(exps),
            bundles=sorted(served.bundles),
        )

    def _tell_siblings(self, path: str, call: str) -> None:
        """Every process of this address runs the experiments file at ``path`` before the
        call returns (UNAVAILABLE names those that do not, and how to retry)."""
        s = self.service
        if s.siblings is None or s.siblings.me.count < 2:
            return
        behind = s.siblings.broadcast_experiments(path, s.cfg.reload_wait_seconds)
        if behind:
            again = "call again" if call == "ReloadExperiments" else "call ReloadExperiments"
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{call}: experiments {path} run in worker {s.siblings.me.index}, but not in "
                f"{'; '.join(behind)}; {again} to retry",
            )

    @_rpc("Promote")
    def Promote(
        self, request: pb.PromoteRequest, context: grpc.ServicerContext
    ) -> pb.PromoteResponse:
        self._authorize(context)
        s = self.service
        served = s.experiments
        if served is None or not served.path:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "no experiments are running")
        now = s.now()
        try:  # recorded beside the file first: a restart, or any process, applies it
            decision = decide(served.path, request.experiment, request.variant, now, request.reason)
        except DecisionRefused as e:  # decided already, not started, the file not writable
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from e
        except TailoredError as e:  # no such experiment or variant
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        try:  # this process stops the experiment at once, whatever follows
            after = s.follow_experiments(served.path)
        except TailoredError as e:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{decision.experiment}: {decision.variant} is recorded as promoted, but the "
                f"experiments file cannot be loaded now ({e}); fix it and call "
                "ReloadExperiments",
            ) from e
        self._serve_promoted(decision.changes.get("bundle"), decision)
        self._tell_siblings(served.path, "Promote")
        _log.warning(
            "experiment %s: variant %s promoted (bundle %s, defaults %s)",
            decision.experiment,
            decision.variant,
            s.bundle.version,
            s.defaults,
        )
        return pb.PromoteResponse(
            bundle_version=s.bundle.version,
            defaults={k: str(v) for k, v in s.defaults.items()},
            running=[e.name for e in after.experiments.experiments if e.running(now)],
        )

    def _serve_everywhere(
        self, path: Path | None, refused: Callable[[Exception], str], retry: str
    ) -> tuple[str, str, float]:
        """Load ``path`` (None: the latest not reserved) and serve it here, then in every
        sibling before returning: (new version, previous version, load seconds).
        FAILED_PRECONDITION with ``refused(error)`` when it cannot be loaded (the current
        bundle keeps serving); UNAVAILABLE naming the workers behind, and ``retry``."""
        s = self.service
        try:
            new, old, seconds, loaded = s.bundle.reload(path)
        except (TailoredError, OSError, ValueError) as e:
            s.metrics.reloads.labels("refused").inc()
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, refused(e)) from e
        s.metrics.reloads.labels("loaded").inc()
        if s.siblings is not None:  # every process serves it before the call returns
            behind = s.siblings.broadcast(loaded, s.cfg.reload_wait_seconds)
            if behind:
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"bundle {new} is served by worker {s.siblings.me.index}, but not by "
                    f"{'; '.join(behind)}; {retry}",
                )
        return new, old, seconds

    def _serve_promoted(self, version: Any, decision: Any) -> None:
        """Serve this decision's bundle, if it names one, here and in every sibling."""
        s = self.service
        if version is None or version == s.bundle.version:
            return
        path = s.bundle.current.bundle.manifest.path.parent / str(version)
        self._serve_everywhere(
            path,
            lambda e: (
                f"{decision.experiment}: {decision.variant} is recorded as promoted, but "
                f"its bundle cannot be served ({e}); fix it and call ReloadBundle {path}"
            ),
            f"call ReloadBundle {path} to retry",
        )

    @_rpc("Status")
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        self._authorize(context)
        s = self.service
        served = s.bundle.current
        bundle = served.bundle
        return pb.StatusResponse(
            bundle_version=bundle.version,
            bundle_path=str(bundle.manifest.path),
            items=bundle.n_items,
            users=len(bundle.users) if bundle.users is not None else 0,
            index_kind=bundle.index.kind,
            ranker=bundle.ranker is not None,
            state_backend=s.state.backend,
            uptime_seconds=time.time() - s.started,
            reloads=s.bundle.reloads,
            failed_reloads=s.bundle.failed_reloads,
            surfaces=list(s.cfg.surfaces),
            worker=s.siblings.me.index if s.siblings is not None else 0,
            workers=s.siblings.me.count if s.siblings is not None else 1,
            pid=os.getpid(),
            now_unix_ms=int(s.now() * 1000),
            onnx_provider=bundle.onnx_provider,
            index_device=served.index_device,
            **_index_status(bundle.index, bundle.manifest.metrics, bool(s.cfg.index_search)),
        )

    @_rpc("SetItemAvailability")
    def SetItemAvailability(
        self, request: pb.SetItemAvailabilityRequest, context: grpc.ServicerContext
    ) -> pb.SetItemAvailabilityResponse:
        self._authorize(context)
        for i, item in enumerate(request.item_ids):
            check_id(item, f"item_ids[{i}]")
        total = self.service.state.set_available(list(request.item_ids), request.available)
        self.service._unavailable = (0.0, frozenset())  # this server sees it at once
        return pb.SetItemAvailabilityResponse(unavailable_total=total)

    @_rpc("Forget")
    def Forget(self, request: pb.ForgetRequest, context: grpc.ServicerContext) -> pb.ForgetResponse:
        self._authorize(context)
        s = self.service
        check_id(request.user_id, "user_id")
        user = s.pseudonym(request.user_id)
        s.eraser.remember(user)  # first: whatever fails below, later training leaves them out
        # what this process still holds to write of theirs (a page, an exposure) goes first,
        # so that the erasure finds it; what it cannot write in time is erased at the writer
        s.exposures.flush(_FLUSH_SECONDS)
        s.pages.writer.flush(_FLUSH_SECONDS)
        online = s.guard.call(s.state.forget, user)
        if s.experiments is not None:
            s.experiments.forget_user(user)
        done = s.eraser.submit(user, "erasure", s.state.store, online)
        left = context.time_remaining()
        try:
            erasure = done.result(timeout=None if left is None else max(left - 0.05, 0.0))
        except TimeoutError as e:
            raise _Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the online state has forgotten the user; their bundle rows are being removed "
                "and the audit record written (call again to wait for it)",
            ) from e
        removed = {
            f"{store}: {kind}": n
            for store, counts in erasure.removed.items()
            for kind, n in counts.items()
        }
        if erasure.failed:
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE,
                "erasure incomplete: " + failures(erasure.failed) + " (call again to finish it)",
            )
        return pb.ForgetResponse(pseudonym=user, held=erasure.held, removed=removed)


def create_server(address: str, service: Service) -> tuple[grpc.Server, int]:
    """A server on ``address`` (``host:port``; port 0 picks a free one), not yet started;
    returns (server, bound port)."""
    cfg = service.cfg
    # at most max_concurrent_rpcs (<= workers) calls run at once; the threads beyond the
    # workers answer refusals and health checks, which take microseconds
    threads = cfg.workers + max(4, cfg.workers)
    server = grpc.server(
        TimedPool(threads),  # each call knows how long it waited for its thread
        interceptors=[service.admission],
        # a backstop only (refused there, a call is not counted): admission refuses first
        maximum_concurrent_rpcs=_BACKSTOP_RPCS,
    )
    pb_grpc.add_PersonalizationServicer_to_server(_Personalization(service), server)
    pb_grpc.add_AdminServicer_to_server(_Admin(service), server)
    health_servicer = health.HealthServicer()
    for name in ("", *SERVICE_NAMES, STATE_HEALTH):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    service.health = health_servicer
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise TailoredError(f"cannot listen on {address} (in use, or not an address here)")
    return server, port


def _index_status(index: Any, metrics: dict[str, Any], replaced: bool) -> dict[str, Any]:
    """Status's index fields: the search-time parameters as served, and what the bundle's
    build measured at the setting it kept (``metrics.index``)."""
    built = metrics.get("index") or {}
    recall = built.get("recall_tolerant")
    knobs = getattr(index, "search_params", ())  # none for an exact index
    return {
        "index_search": {knob: int(index.params[knob]) for knob in knobs},
        "index_recall": 1.0 if index.exact else float(recall or 0.0),
        "index_search_ms": float(built.get("search_ms") or 0.0),
        "index_search_source": "serve config" if replaced else "bundle",
    }
