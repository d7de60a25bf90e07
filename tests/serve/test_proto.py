"""The .proto is the contract: the committed generated code is exactly what the recorded
command (``python tools/gen_proto.py``) writes from it with the pinned grpcio-tools."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
assert _spec is not None and _spec.loader is not None
gen_proto = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_proto)


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates it")
    written = gen_proto.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(gen_proto.GENERATED)
    for path in written:
        committed = ROOT / "serve" / "v1" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python tools/gen_proto.py`"
        )


def test_the_services_are_in_package_tailored_v1() -> None:
    from tailored.serve.v1 import personalization_pb2 as pb

    assert pb.DESCRIPTOR.package == "tailored.v1"
    assert set(pb.DESCRIPTOR.services_by_name) == {"Personalization", "Admin"}
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Personalization"].methods}
    assert methods == {"Recommend", "Page", "Track", "SetConsent"}
