"""A small client for people and scripts (the CLI, the demo, the benchmarks): the stubs over
one channel, with the admin token attached where given."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc

from tailored.serve.v1 import personalization_pb2 as pb
from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

__all__ = ["Client", "Serving", "event_type", "serving_line"]

_SERVING = re.compile(r"^serving bundle (\S+) \((\d+) items\) on (\S+):(\d+) \(state: (\S+)\)")


@dataclass(frozen=True)
class Serving:
    """What ``tailored serve`` prints on its first stdout line once it listens."""

    version: str
    items: int
    host: str
    port: int
    state: str

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def line(self) -> str:
        return (
            f"serving bundle {self.version} ({self.items} items) on {self.host}:{self.port} "
            f"(state: {self.state})"
        )

    @classmethod
    def parse(cls, line: str) -> Serving | None:
        """The line :meth:`line` wrote, or None for any other line."""
        m = _SERVING.match(line)
        return None if m is None else cls(m[1], int(m[2]), m[3], int(m[4]), m[5])


def serving_line(version: str, items: int, host: str, port: int, state: str) -> str:
    return Serving(version, items, host, port, state).line()


def event_type(name: str) -> int:
    """``"click"`` -> ``pb.CLICK``; raises ValueError naming the known types."""
    try:
        return int(pb.EventType.Value(name.upper()))
    except ValueError:
        known = [n.lower() for n, v in pb.EventType.items() if v != pb.EVENT_TYPE_UNSPECIFIED]
        raise ValueError(f"unknown event type {name!r}; known: {known}") from None


class Client:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        own_connection: bool = False,
    ) -> None:
        # gRPC shares one connection among a process's channels to one target; with
        # ``own_connection`` this client opens its own (a server of several processes gives
        # each connection to one of them)
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        self.channel = grpc.insecure_channel(target, options=options)
        self.personalization = pb_grpc.PersonalizationStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)
        self.timeout = timeout
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()

    def wait_ready(self, timeout: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        surface: str = "home",
        exclude: Iterable[str] = (),
        profile: Mapping[str, str] | None = None,
        context: pb.Context | None = None,
    ) -> pb.RecommendResponse:
        req = pb.RecommendRequest(
            user_id=user_id,
            k=k,
            surface=surface,
            exclude_item_ids=list(exclude),
            profile=dict(profile or {}),
            context=context,
        )
        resp: pb.RecommendResponse = self.personalization.Recommend(req, timeout=self.timeout)
        return resp

    def page(
        self,
        user_id: str,
        modules: Iterable[pb.PageModule],
        k: int = 10,
        *,
        page_type: str = "home",
        exclude: Iterable[str] = (),
        profile: Mapping[str, str] | None = None,
        context: pb.Context | None = None,
    ) -> pb.PageResponse:
        req = pb.PageRequest(
            user_id=user_id,
            page_type=page_type,
            modules=list(modules),
            k=k,
            exclude_item_ids=list(exclude),
            profile=dict(profile or {}),
            context=context,
        )
        resp: pb.PageResponse = self.personalization.Page(req, timeout=self.timeout)
        return resp

    def track(self, events: Iterable[pb.Event]) -> pb.TrackResponse:
        req = pb.TrackRequest(events=list(events))
        resp: pb.TrackResponse = self.personalization.Track(req, timeout=self.timeout)
        return resp

    def set_consent(self, user_id: str, purposes: Iterable[str]) -> pb.SetConsentResponse:
        req = pb.SetConsentRequest(user_id=user_id, purposes=list(purposes))
        resp: pb.SetConsentResponse = self.personalization.SetConsent(req, timeout=self.timeout)
        return resp

    def status(self) -> pb.StatusResponse:
        resp: pb.StatusResponse = self.admin.Status(
            pb.StatusRequest(), timeout=self.timeout, metadata=self._auth
        )
        return resp

    def reload_experiments(self, path: str = "") -> pb.ReloadExperimentsResponse:
        resp: pb.ReloadExperimentsResponse = self.admin.ReloadExperiments(
            pb.ReloadExperimentsRequest(path=path),
            timeout=max(self.timeout, 120),
            metadata=self._auth,
        )
        return resp

    def promote(self, experiment: str, variant: str, reason: str = "") -> pb.PromoteResponse:
        resp: pb.PromoteResponse = self.admin.Promote(
            pb.PromoteRequest(experiment=experiment, variant=variant, reason=reason),
            timeout=max(self.timeout, 120),
            metadata=self._auth,
        )
        return resp

    def reload(self, path: str = "") -> pb.ReloadBundleResponse:
        resp: pb.ReloadBundleResponse = self.admin.ReloadBundle(
            pb.ReloadBundleRequest(path=path), timeout=max(self.timeout, 120), metadata=self._auth
        )
        return resp

    def forget(self, user_id: str) -> pb.ForgetResponse:
        resp: pb.ForgetResponse = self.admin.Forget(
            pb.ForgetRequest(user_id=user_id), timeout=max(self.timeout, 120), metadata=self._auth
        )
        return resp

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
