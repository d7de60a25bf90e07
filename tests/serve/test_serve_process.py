"""``tailored serve`` as the separate process a site runs: started from the command line on a
free port, called with ``tailored recommend``/``track``, two replicas sharing one Redis, a
watched bundles directory, a kill -9 during Track, logs without raw user ids, and no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tailored.bundle.format import latest_bundle
from tailored.cli import main
from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.client import Client, Serving
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.v1 import personalization_pb2 as pb
from tests.helpers import TEST_KEY

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)

TOKEN = "process-admin-token"
RAW_USER = "raw-site-user-4f9c1d"  # must never appear in the server's output


class ServerProcess:
    """``python -m tailored.cli -v serve ...`` on port 0; the port read from its first line."""

    def __init__(self, bundle: Path, *args: str, home: Path) -> None:
        env = {
            **os.environ,
            "TAILORED_PSEUDONYM_KEY": TEST_KEY.hex(),
            "TAILORED_ADMIN_TOKEN": TOKEN,
            "TAILORED_HOME": str(home),
        }
        cmd = [sys.executable, "-m", "tailored.cli", "-v", "serve", str(bundle), "--port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, "--clock", "bundle", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        serving = Serving.parse(line)
        if serving is None:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        self.target = serving.target
        self.first_line = line

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it wrote."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.first_line + out + err


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_serve_recommend_and_track_from_the_command_line(
    serve_bundle: Path, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ServerProcess(serve_bundle, "--state", f"sqlite:///{tmp_path / 's.db'}", home=home)
    try:
        assert main(["recommend", "--target", server.target, "--user", RAW_USER, "--k", "3"]) == 0
        out = capsys.readouterr().out
        assert "popular" in out and len(re.findall(r"^\s+\d\. ", out, re.M)) == 3
        assert main(["track", "--target", server.target, "--user", RAW_USER, "--item", "50"]) == 0
        assert "accepted 1, dropped 0" in capsys.readouterr().out
        assert main(["recommend", "--target", server.target, "--user", RAW_USER, "--json"]) == 0
        assert '"strategy": "personalized"' in capsys.readouterr().out
        # a bad argument: a clear error and a non-zero exit
        assert main(["recommend", "--target", server.target, "--user", RAW_USER, "--k", "0"]) == 2
        assert "INVALID_ARGUMENT: k: must be between 1 and 100" in capsys.readouterr().err
    finally:
        logs = server.stop()
    assert "serving bundle" in logs
    assert RAW_USER not in logs  # ids are pseudonymized at the edge and never logged


def test_two_replicas_share_one_redis(serve_bundle: Path, home: Path, redis_url: str) -> None:
    import redis

    prefix = f"tailored-test-{uuid.uuid4().hex}"
    url = f"{redis_url}?prefix={prefix}"
    a = ServerProcess(serve_bundle, "--state", url, home=home)
    b = ServerProcess(serve_bundle, "--state", url, home=home)
    try:
        with Client(a.target) as ca, Client(b.target) as cb:
            user = f"replica-user-{uuid.uuid4().hex[:8]}"
            assert cb.recommend(user, 5).strategy == "popular"
            ack = ca.track([pb.Event(user_id=user, item_id="50", type=pb.CLICK)])
            assert ack.accepted == 1
            on_b = cb.recommend(user, 10)  # the other replica sees the click at once
            assert on_b.strategy == "personalized"
            assert "50" not in {i.item_id for i in on_b.items}
            ca.set_consent(user, [])
            assert cb.recommend(user, 5).strategy == "popular"
    finally:
        a.stop()
        b.stop()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_new_version_in_the_watched_directory_is_swapped_in(
    serve_bundle: Path, home: Path, tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    first = latest_bundle(serve_bundle)
    assert first is not None
    shutil.copytree(first, root / "v000001")
    config = tmp_path / "serve.toml"
    config.write_text("[serve]\nwatch_seconds = 0.2\n")
    server = ServerProcess(
        root, "--config", str(config), "--state", f"sqlite:///{tmp_path / 's.db'}", home=home
    )
    try:
        with Client(server.target, token=TOKEN) as c:
            assert c.status().bundle_path == str(root / "v000001")
            (root / "v000003").mkdir()  # not committed (no manifest): ignored
            shutil.copytree(first, root / "v000002")
            deadline = time.monotonic() + 30
            while c.status().bundle_path != str(root / "v000002"):
                assert time.monotonic() < deadline, "the new version was not loaded"
                time.sleep(0.1)
            assert c.status().reloads == 1
            assert len(c.recommend("1", 5).items) == 5
    finally:
        server.stop()


def test_every_acknowledged_event_survives_kill_9(
    serve_bundle: Path, home: Path, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    server = ServerProcess(serve_bundle, "--state", f"sqlite:///{db}", home=home)
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def track(worker: int) -> None:
        with Client(server.target, timeout=5) as c:
            n = 0
            while not stop.is_set():
                user, item = f"kill-user-{worker}", f"kill-item-{worker}-{n}"
                try:
                    c.track([pb.Event(user_id=user, item_id=item, type=pb.CLICK)])
                except grpc.RpcError:
                    return  # the server is gone: this event was never acknowledged
                with lock:
                    acked.append((user, item))
                n += 1

    threads = [threading.Thread(target=track, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join()
    server.stop()
    assert len(acked) > 20
    pseudonym = Pseudonymizer(TEST_KEY)
    with SQLiteState(db) as state:
        stored = {
            (f"kill-user-{w}", e.item_id)
            for w in range(4)
            for e in state.user(pseudonym(f"kill-user-{w}"), 1_000_000).events
        }
    assert set(acked) <= stored


def test_serving_imports_no_torch(serve_bundle: Path, home: Path) -> None:
    code = f"""
import sys, time
from pathlib import Path
from tailored.config import load_serve_config
from tailored.serve.bundles import LiveBundle
from tailored.serve.server import create_server
from tailored.serve.recommender import Request
live = LiveBundle(Path({str(serve_bundle)!r}), load_serve_config())
rec = live.current.recommend(Request(user="0" * 32, k=5, surface="home", time=time.time(),
                                     personalized=True, profile={{"age": "30"}}))
assert len(rec.item_ids) == 5, rec
heavy = sorted(m for m in ("torch", "pytorch_lightning", "lightning") if m in sys.modules)
print("heavy:", heavy)
"""
    env = {**os.environ, "TAILORED_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "heavy: []" in out.stdout, out.stdout + out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _by_worker(target: str, want: int, tries: int = 200) -> dict[int, Client]:
    """One connected client per worker process: new channels until each has answered (the
    kernel spreads new connections over the processes listening on the port)."""
    clients: dict[int, Client] = {}
    for _ in range(tries):
        c = Client(target, token=TOKEN, own_connection=True)
        worker = c.status().worker
        if worker in clients:
            c.close()
        else:
            clients[worker] = c
        if len(clients) == want:
            return clients
    for c in clients.values():
        c.close()
    raise AssertionError(f"only workers {sorted(clients)} answered in {tries} connections")


def _kill_and_reconnect(target: str, pid: int, worker: int, seconds: float = 60) -> Client:
    """kill -9 the worker process ``pid``; once the supervisor has started it again, a
    client connected to it (the other workers' clients closed)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + seconds
    while True:
        try:
            again = _by_worker(target, 2, tries=50)
        except (AssertionError, grpc.RpcError):
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            time.sleep(0.5)
            continue
        client = again.pop(worker)
        for c in again.values():
            c.close()
        return client


def test_several_processes_share_one_address_the_state_and_a_reload(
    serve_bundle: Path, home: Path, tmp_path: Path
) -> None:
    import urllib.request

    first = latest_bundle(serve_bundle)
    assert first is not None
    root = tmp_path / "bundles"
    shutil.copytree(first, root / "v000001")
    shutil.copytree(first, root / "v000002")
    config = tmp_path / "serve.toml"
    config.write_text("[serve]\nprocesses = 2\n")
    metrics_port = _free_port()
    server = ServerProcess(
        root / "v000001",
        *("--config", str(config), "--state", f"sqlite:///{tmp_path / 's.db'}"),
        *("--metrics-port", str(metrics_port)),
        home=home,
    )
    clients: dict[int, Client] = {}
    try:
        assert "(2 processes)" in server.first_line
        clients = _by_worker(server.target, 2)
        pids = {w: c.status().pid for w, c in clients.items()}
        assert len(set(pids.values())) == 2 and server.proc.pid not in pids.values()
        assert {c.status().workers for c in clients.values()} == {2}
        # a click through one process changes the next page from the other (one SQLite file)
        user = f"multi-user-{uuid.uuid4().hex[:8]}"
        assert clients[1].recommend(user, 5).strategy == "popular"
        assert clients[0].track([pb.Event(user_id=user, item_id="50", type=pb.CLICK)]).accepted
        after = clients[1].recommend(user, 10)
        assert after.strategy == "personalized" and "50" not in {i.item_id for i in after.items}
        # a reload through one process returns once every process serves the new bundle
        clients[0].reload(str(root / "v000002"))
        for c in clients.values():
            assert c.status().bundle_path == str(root / "v000002")
        # one Prometheus endpoint for all: both processes' bundle and requests counted
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        assert 'tailored_bundle_info{version="v000001"} 2.0' in text
        statuses = re.search(r'tailored_requests_total\{code="OK",method="Status"\} (\S+)', text)
        assert statuses is not None and float(statuses[1]) >= len(clients) * 3
        # a worker that dies is started again, on the bundle its siblings were asked to serve
        clients.pop(1).close()
        restarted = _kill_and_reconnect(server.target, pids[1], 1)
        status = restarted.status()
        restarted.close()
        assert status.pid != pids[1] and status.bundle_path == str(root / "v000002")
    finally:
        for c in clients.values():
            c.close()
        out = server.stop()
    assert server.proc.returncode == 0, out
    assert user not in out


def test_several_processes_reload_and_promote_experiments_together(
    serve_bundle: Path, home: Path, tmp_path: Path
) -> None:
    """ReloadExperiments and Promote reach one process; every process runs the result
    before the call returns, and a restarted one starts from it."""
    from tests.experiments.helpers import experiment_toml

    first = latest_bundle(serve_bundle)
    assert first is not None
    root = tmp_path / "bundles"
    shutil.copytree(first, root / "v000001")
    shutil.copytree(first, root / "v000002")
    manifest = json.loads((root / "v000002" / "manifest.json").read_text())
    (root / "v000002" / "manifest.json").write_text(json.dumps({**manifest, "version": "v000002"}))
    experiments = tmp_path / "experiments.toml"
    model = experiment_toml(
        "model", "model", "m-1", [("current", 0.5, {}), ("new", 0.5, {"bundle": "v000002"})]
    )
    experiments.write_text(model)
    config = tmp_path / "serve.toml"
    config.write_text(f'[serve]\nprocesses = 2\nexperiments = "{experiments}"\n')
    server = ServerProcess(
        root,
        *("--config", str(config), "--state", f"sqlite:///{tmp_path / 's.db'}"),
        home=home,
    )
    clients: dict[int, Client] = {}
    try:
        clients = _by_worker(server.target, 2)
        users = [f"exp-user-{i}" for i in range(40)]

        def running(c: Client) -> set[str]:
            return {a.experiment for u in users for a in c.recommend(u, 3).assignments}

        # the candidate v000002 is the latest version, reserved by the experiment that
        # tests it: both processes started on v000001 from the bundles root
        assert all(running(c) == {"model"} for c in clients.values())
        assert all(c.status().bundle_version == "v000001" for c in clients.values())
        # a reload through worker 1 returns once both run the new file
        experiments.write_text(
            model + experiment_toml("ranker", "ranking", "r-1", [("on", 0.5, {}), ("x", 0.5, {})])
        )
        resp = clients[1].reload_experiments("")
        assert list(resp.running) == ["model", "ranker"] and list(resp.bundles) == ["v000002"]
        assert all(running(c) == {"model", "ranker"} for c in clients.values())
        # promoted through worker 0: both serve the candidate to everyone
        promoted = clients[0].promote("model", "new", "won")
        assert promoted.bundle_version == "v000002" and list(promoted.running) == ["ranker"]
        for c in clients.values():
            assert c.status().bundle_version == "v000002" and running(c) == {"ranker"}
        # a worker that dies comes back running the decided file
        pid = clients[1].status().pid
        clients.pop(1).close()
        clients[1] = _kill_and_reconnect(server.target, pid, 1)
        assert clients[1].status().pid != pid
        assert clients[1].status().bundle_version == "v000002"
        assert running(clients[1]) == {"ranker"}
    finally:
        for c in clients.values():
            c.close()
        out = server.stop()
    assert server.proc.returncode == 0, out


def test_several_processes_share_one_redis(
    serve_bundle: Path, home: Path, tmp_path: Path, redis_url: str
) -> None:
    import redis

    prefix = f"tailored-test-{uuid.uuid4().hex}"
    config = tmp_path / "serve.toml"
    config.write_text("[serve]\nprocesses = 2\n")
    server = ServerProcess(
        serve_bundle, "--config", str(config), "--state", f"{redis_url}?prefix={prefix}", home=home
    )
    clients: dict[int, Client] = {}
    try:
        clients = _by_worker(server.target, 2)
        user = f"redis-multi-{uuid.uuid4().hex[:8]}"
        assert clients[1].recommend(user, 5).strategy == "popular"
        assert clients[0].track([pb.Event(user_id=user, item_id="50", type=pb.CLICK)]).accepted
        after = clients[1].recommend(user, 10)  # the other process reads the click from Redis
        assert after.strategy == "personalized" and "50" not in {i.item_id for i in after.items}
        clients[1].set_consent(user, [])  # consent withdrawn through one, seen by the other
        assert clients[0].recommend(user, 5).strategy == "popular"
        assert list(redis.Redis.from_url(redis_url).scan_iter(f"{prefix}:*"))  # it was Redis
    finally:
        for c in clients.values():
            c.close()
        out = server.stop()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert server.proc.returncode == 0, out
    assert user not in out


def test_the_workers_stop_when_their_supervisor_is_killed(
    serve_bundle: Path, home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("[serve]\nprocesses = 2\n")
    server = ServerProcess(
        serve_bundle,
        *("--config", str(config), "--state", f"sqlite:///{tmp_path / 's.db'}", "--no-watch"),
        home=home,
    )
    clients = _by_worker(server.target, 2)
    pids = [c.status().pid for c in clients.values()]
    for c in clients.values():
        c.close()
    server.proc.kill()  # SIGKILL: the supervisor cannot pass anything on
    server.proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.2)
    # its control directory is left behind; the next supervisor's sweep removes it (here at
    # once: the default waits for a minute without change), and nothing of a live one
    from tailored.serve.workers import sweep_stale

    left = [
        d
        for d in Path(tempfile.gettempdir()).glob("tailored-serve-*")
        if (d / "supervisor.pid").is_file()
        and (d / "supervisor.pid").read_text().strip() == str(server.proc.pid)
    ]
    assert len(left) == 1
    assert left[0] not in sweep_stale(left[0].parent, older_than=3600)  # changed just now
    live = tmp_path / "tailored-serve-live"
    live.mkdir()
    (live / "supervisor.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "tailored-serve-nopid").mkdir()
    swept = sweep_stale(left[0].parent, older_than=0)
    assert left[0] in swept and not left[0].exists()
    assert sweep_stale(tmp_path, older_than=0) == []
    assert live.exists() and (tmp_path / "tailored-serve-nopid").exists()


def test_a_broadcast_reports_a_refusing_or_superseding_sibling(
    serve_bundle: Path, tmp_path: Path
) -> None:
    """In process: worker 0 of 2 asks; a stand-in worker 1 answers through the control
    directory as a real one would."""
    from tailored.config import ServeConfig
    from tailored.serve.bundles import LiveBundle
    from tailored.serve.workers import Control, Siblings, WorkerInfo

    control = Control(tmp_path)
    bundle = LiveBundle(serve_bundle, ServeConfig())
    me = Siblings(control, WorkerInfo(0, 2), bundle, "sqlite")
    served = bundle.current.bundle.manifest.path

    def worker_1(answer: str) -> None:
        deadline = time.monotonic() + 10
        while (request := control.reload_request()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if answer == "refuse":
            control.report(1, {"path": "elsewhere", "refused": {"seq": request[0], "error": "no"}})
        elif answer == "supersede":
            control.request_reload(tmp_path / "v999999")
        else:
            control.report(1, {"path": str(request[1].resolve()), "refused": {}})

    for answer, words in [("refuse", "worker 1 (refused it: no)"), ("supersede", "a later reload")]:
        (tmp_path / "reload.json").unlink(missing_ok=True)
        helper = threading.Thread(target=worker_1, args=(answer,))
        helper.start()
        behind = me.broadcast(served, timeout=30)
        helper.join()
        assert len(behind) == 1 and words in behind[0], behind
    (tmp_path / "reload.json").unlink()
    helper = threading.Thread(target=worker_1, args=("follow",))
    helper.start()
    assert me.broadcast(served, timeout=30) == []
    helper.join()
    assert me.broadcast(served, timeout=0.3) == []  # worker 1 already serves it
    (tmp_path / "worker-1.json").unlink()  # a worker that never answers
    behind = me.broadcast(served, timeout=0.3)
    assert len(behind) == 1 and "workers [1] (not within 0 s" in behind[0], behind
    bundle.close()


def test_the_restart_budget_stops_a_crash_loop_but_not_rare_deaths() -> None:
    from tailored.serve.workers import RestartBudget

    budget = RestartBudget(limit=3, window=10.0)
    assert all(budget.allow(t) for t in (0.0, 1.0, 2.0))
    assert not budget.allow(3.0)  # a fourth death within 10 s
    rare = RestartBudget(limit=3, window=10.0)
    assert all(rare.allow(t) for t in (0.0, 11.0, 22.0, 33.0, 44.0))  # one every 11 s
