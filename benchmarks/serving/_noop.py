"""The ceiling for ``benchmarks/serving/serve_load.py``: a ``tailored.v1.Personalization``
server that does no work. Recommend answers k items of a template response (a real server's
answer, so ids, scores, reasons and titles have the real sizes), built per request the way the
real server builds its answer; the gRPC server is configured as ``tailored serve``'s (same worker
threads and concurrency limit). What is left is gRPC, protobuf and Python's own cost.

    python -m benchmarks.serving._noop TEMPLATE.pb [--workers 8] [--max-concurrent-rpcs 64]
        [--port 0]

prints ``listening on PORT`` once serving; SIGTERM stops it. Several processes given the same
``--port`` share it (gRPC sets ``SO_REUSEPORT``), as ``tailored serve``'s worker processes do:
the ceiling of a server of N processes.
"""

from __future__ import annotations

import argparse
import signal
import threading
import uuid
from concurrent import futures
from pathlib import Path

import grpc

from tailored.serve.v1 import personalization_pb2 as pb
from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

__all__ = ["NoopPersonalization", "main"]


class NoopPersonalization(pb_grpc.PersonalizationServicer):
    def __init__(self, template: pb.RecommendResponse) -> None:
        items = list(template.items)
        self.ids = [i.item_id for i in items]
        self.scores = [i.score for i in items]
        self.reasons = [i.reason for i in items]
        self.titles = [i.title for i in items]
        self.version = template.bundle_version
        self.strategy = template.strategy

    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        k = request.k or len(self.ids)
        return pb.RecommendResponse(
            items=[
                pb.RecommendedItem(item_id=i, score=s, reason=r, title=t)
                for i, s, r, t in zip(
                    self.ids[:k], self.scores[:k], self.reasons[:k], self.titles[:k], strict=True
                )
            ],
            bundle_version=self.version,
            request_id=uuid.uuid4().hex,
            strategy=self.strategy,
        )

    def Track(self, request: pb.TrackRequest, context: grpc.ServicerContext) -> pb.TrackResponse:
        return pb.TrackResponse(accepted=len(request.events))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("template", type=Path, help="a serialized RecommendResponse")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--max-concurrent-rpcs", type=int, default=64)
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    args = p.parse_args(argv)
    template = pb.RecommendResponse.FromString(args.template.read_bytes())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="rpc"),
        maximum_concurrent_rpcs=args.max_concurrent_rpcs,
    )
    pb_grpc.add_PersonalizationServicer_to_server(NoopPersonalization(template), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on {port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
