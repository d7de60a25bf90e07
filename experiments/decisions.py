"""Recording a decision: a variant promoted, written beside the experiments file.

:func:`decide` checks the experiments file and the request against it, then adds the
decision to ``NAME.decisions.json`` (:func:`tailored.experiments.config.decisions_path`)
under an exclusive lock, through a temporary file that is synced and renamed: a crash leaves
the old decisions or the new ones, and two servers deciding at once do not lose one. The
server's ``Promote`` calls it; every process serving the file applies it on load.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tailored.experiments.config import (
    Decision,
    ExperimentError,
    decisions_path,
    load_experiments,
)

__all__ = ["DecisionRefused", "decide"]


class DecisionRefused(ExperimentError):
    """A well-formed decision that cannot be made now: the experiment was decided already or
    has not started, or the decision cannot be written beside the experiments file."""


def decide(
    path: str | Path, experiment: str, variant: str, at: float, reason: str = ""
) -> Decision:
    """Promote ``variant`` of ``experiment`` (declared in the file at ``path``) as of ``at``
    (unix seconds): recorded durably before this returns. Refused (ExperimentError) when the
    experiment or variant is unknown; DecisionRefused when the experiment has not started,
    was decided already, or the decision cannot be written (the folder must be writable)."""
    p = Path(path)
    try:
        return _decide(p, experiment, variant, at, reason)
    except OSError as e:
        raise DecisionRefused(
            f"{decisions_path(p)}: cannot record the decision ({e.strerror or e}); the folder "
            f"of {p} must be writable by the server"
        ) from e


def _decide(p: Path, experiment: str, variant: str, at: float, reason: str) -> Decision:
    with _locked(decisions_path(p)):
        exps = load_experiments(p)  # the file and the decisions so far, checked
        e = exps.get(experiment)
        try:
            chosen = e.variant(variant)
        except KeyError:
            raise ExperimentError(
                f"{p}: experiment {experiment!r}: no variant {variant!r} "
                f"({[v.name for v in e.variants]})"
            ) from None
        if e.decided is not None:
            raise DecisionRefused(
                f"{p}: experiment {experiment!r} was decided already: {e.decided.variant!r} "
                f"promoted at {e.end.isoformat()}"
            )
        if at < e.start.timestamp():
            raise DecisionRefused(
                f"{p}: experiment {experiment!r} has not started (it starts "
                f"{e.start.isoformat()}); there is nothing to decide"
            )
        mine = chosen.changes.get("bundle")
        rejected = sorted(
            {str(v.changes["bundle"]) for v in e.variants if "bundle" in v.changes} - {mine}
        )
        decision = Decision(e.name, chosen.name, at, dict(chosen.changes), tuple(rejected), reason)
        doc = {"decisions": [d.to_json() for d in (*exps.decisions, decision)]}
        _write_synced(decisions_path(p), json.dumps(doc, indent=2) + "\n")
    return decision


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock held on ``path``'s lock file (beside it) while the block runs."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_synced(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)  # the rename itself survives a crash
    finally:
        os.close(dirfd)
