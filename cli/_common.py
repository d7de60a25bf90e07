"""What the command groups share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Sub", "rpc"]

Sub = Any  # argparse's _SubParsersAction is private
T = TypeVar("T")


def rpc(fn: Callable[[], T]) -> T:
    """Call the server; its refusal becomes a :class:`TailoredError` (exit 2, the status and
    the server's words on stderr) instead of a traceback."""
    import grpc

    from tailored.errors import TailoredError

    try:
        return fn()
    except grpc.RpcError as e:
        raise TailoredError(f"{e.code().name}: {e.details()}") from None
