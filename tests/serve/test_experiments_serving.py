"""Experiments in the real server: each Recommend carries the user's assignments and is
served as their variant says (popularity control, another bundle version), the first
exposure is logged once in the online state, users without consent are in no experiment,
and ReloadExperiments refuses a bad file or a bundle that does not verify while the running
configuration keeps serving."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import grpc
import pytest

from tailored.bundle.format import latest_bundle
from tailored.data.pseudonym import Pseudonymizer
from tailored.experiments import Assigner, load_experiments
from tests.experiments.helpers import experiment_toml, personalization
from tests.helpers import TEST_KEY
from tests.serve.helpers import Running

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)

EXPERIMENTS = personalization("pers-1") + experiment_toml(
    "new-bundle",
    "model",
    "bundle-1",
    [("current", 0.5, {}), ("candidate", 0.5, {"bundle": "v000002", "mmr_lambda": 1.0})],
)


@pytest.fixture
def served(serve_bundle: Path, tmp_path: Path) -> tuple[Running, Path]:
    version = latest_bundle(serve_bundle)
    assert version is not None
    root = tmp_path / "bundles"
    shutil.copytree(version, root / "v000001")
    shutil.copytree(version, root / "v000002")  # the candidate: a copy, as version v000002
    manifest = json.loads((root / "v000002" / "manifest.json").read_text())
    (root / "v000002" / "manifest.json").write_text(json.dumps({**manifest, "version": "v000002"}))
    path = tmp_path / "experiments.toml"
    path.write_text(EXPERIMENTS)
    r = Running(root / "v000001", tmp_path / "state.db", experiments=str(path))
    return r, path


def test_each_answer_carries_the_assignments_and_follows_them(
    served: tuple[Running, Path],
) -> None:
    running, path = served
    assigner = Assigner(load_experiments(path))
    pseudo = Pseudonymizer(TEST_KEY)
    try:
        seen = {"popular": 0, "personalized": 0, "current": 0, "candidate": 0}
        for user in (str(u) for u in range(1, 41)):
            resp = running.client.recommend(user, 5)
            got = {a.experiment: a.variant for a in resp.assignments}
            expected = {
                a.experiment: a.variant
                for a in assigner.assign(pseudo(user), running.service.now())
            }
            assert got == expected and set(got) == {"personalization", "new-bundle"}
            for variant in got.values():
                seen[variant] += 1
            assert resp.strategy == (
                "popular" if got["personalization"] == "popular" else "personalized"
            )
            assert resp.bundle_version == (
                "v000002" if got["new-bundle"] == "candidate" else "v000001"
            )
            # one exposure per experiment, written on the first request only
            for _ in range(2):
                running.service.exposures.flush()  # written off the request path
                events = running.service.state.user(pseudo(user), 1000).events
                exposures = sorted(e.item_id for e in events if e.type == "exposure")
                assert exposures == sorted(f"{k}:{v}" for k, v in got.items())
                running.client.recommend(user, 5)
        assert all(n > 5 for n in seen.values()), seen
    finally:
        running.stop()


def test_a_user_without_consent_is_in_no_experiment(served: tuple[Running, Path]) -> None:
    running, _ = served
    try:
        running.client.set_consent("7", [])
        resp = running.client.recommend("7", 5)
        assert list(resp.assignments) == [] and resp.strategy == "popular"
        assert resp.bundle_version == "v000001"
        pseudonym = Pseudonymizer(TEST_KEY)("7")
        assert running.service.state.user(pseudonym, 100).events == ()
    finally:
        running.stop()


def test_a_bad_experiments_file_is_refused_and_the_running_one_stays(
    served: tuple[Running, Path], tmp_path: Path
) -> None:
    running, path = served
    try:
        bad = tmp_path / "bad.toml"
        bad.write_text(EXPERIMENTS.replace("weight = 0.5\nbundle", "weight = 0.7\nbundle"))
        with pytest.raises(grpc.RpcError) as err:
            running.client.reload_experiments(str(bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'new-bundle': variant weights sum to 1.2" in (err.value.details() or "")
        # a variant's bundle that does not verify
        root = path.parent / "bundles"
        shutil.copytree(root / "v000002", root / "v000003")
        emb = root / "v000003" / "items" / "embeddings.npy"
        emb.write_bytes(emb.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
        bad.write_text(EXPERIMENTS.replace('bundle = "v000002"', 'bundle = "v000003"'))
        with pytest.raises(grpc.RpcError) as err:
            running.client.reload_experiments(str(bad))
        details = err.value.details() or ""
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "experiment 'new-bundle', variant 'candidate': bundle 'v000003'" in details
        assert "sha256" in details
        # the running configuration kept serving, and a good file replaces it
        assert {a.experiment for a in running.client.recommend("1", 5).assignments} == {
            "personalization",
            "new-bundle",
        }
        good = tmp_path / "one.toml"
        good.write_text(EXPERIMENTS.split('[[experiment]]\nname = "new-bundle"')[0])
        resp = running.client.reload_experiments(str(good))
        assert list(resp.running) == ["personalization"] and list(resp.bundles) == []
        assert [a.experiment for a in running.client.recommend("1", 5).assignments] == [
            "personalization"
        ]
    finally:
        running.stop()


def test_promote_makes_the_variant_everyones_and_is_audited(
    served: tuple[Running, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tailored.cli import main
    from tests.serve.helpers import TOKEN

    running, path = served
    try:
        # the watcher leaves the candidate alone while the experiment runs
        assert running.service.bundle.reserved == {"v000002"}
        for user in (str(u) for u in range(1, 31)):
            running.client.recommend(user, 5)
        running.service.exposures.flush()  # written off the request path, within 50 ms
        monkeypatch.setenv("TAILORED_ADMIN_TOKEN", TOKEN)
        audit = tmp_path / "audit.jsonl"
        state = f"sqlite:///{path.parent / 'state.db'}"  # the server's (see `served`)
        now = dt.datetime.fromtimestamp(running.service.now(), dt.UTC).isoformat()
        args = ["experiment", "promote", "new-bundle", "candidate", "--experiments", str(path)]
        args += ["--state", state, "--target", running.target, "--audit", str(audit)]
        args += ["--now", now, "--reason", "better offline NDCG"]
        assert main(args) == 0
        status = running.client.status()
        assert status.bundle_version == "v000002"
        assert dict(running.service.defaults) == {"mmr_lambda": 1.0}
        for user in ("1", "2", "3", "4"):  # everyone, whatever their old variant
            resp = running.client.recommend(user, 5)
            assert resp.bundle_version == "v000002"
            assert [a.experiment for a in resp.assignments] == ["personalization"]
        (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
        assert (record["experiment"], record["variant"]) == ("new-bundle", "candidate")
        assert record["bundle_version"] == "v000002" and record["reason"] == "better offline NDCG"
        assert record["users"] == 30 and record["verdicts"]
        # promoting what is no longer running is refused, and nothing is audited
        assert main(args) == 2
        assert len(audit.read_text().splitlines()) == 1
        (decision,) = load_experiments(path).decisions
        assert (decision.variant, decision.reason) == ("candidate", "better offline NDCG")
    finally:
        running.stop()
    # the decision outlives the server: restarted from the bundles root, it serves the
    # promoted bundle with the promoted changes, and the experiment stays over
    again = Running(path.parent / "bundles", path.parent / "state.db", experiments=str(path))
    try:
        assert again.client.status().bundle_version == "v000002"
        assert dict(again.service.defaults) == {"mmr_lambda": 1.0}
        resp = again.client.recommend("1", 5)
        assert [a.experiment for a in resp.assignments] == ["personalization"]
    finally:
        again.stop()


def test_keeping_the_control_keeps_the_candidate_from_everyone(
    served: tuple[Running, Path],
) -> None:
    running, path = served
    try:
        resp = running.client.promote("new-bundle", "current", "no lift shown")
        assert resp.bundle_version == "v000001" and dict(resp.defaults) == {}
        # the candidate lost: the watcher never makes it everyone's bundle
        assert running.service.bundle.reserved == {"v000002"}
        running.service.bundle._check_for_new()
        assert running.client.status().bundle_version == "v000001"
        with pytest.raises(grpc.RpcError) as err:  # decided once
            running.client.promote("new-bundle", "candidate")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "decided already" in str(err.value.details())
    finally:
        running.stop()
    # nor does a restart from the bundles root, although it is the latest version there
    again = Running(path.parent / "bundles", path.parent / "state.db", experiments=str(path))
    try:
        assert again.client.status().bundle_version == "v000001"
    finally:
        again.stop()
