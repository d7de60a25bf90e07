"""The ``tailored`` command line: it parses arguments and calls typed functions.

One module per command group: :mod:`.data` (``data fetch | import | synth``), :mod:`.train`
(``train``, ``evaluate``), :mod:`.bundle` (``bundle build | verify``, ``refresh``),
:mod:`.serve` (``serve``, ``recommend``, ``track``), :mod:`.experiment` (``experiment list |
status | report``) and :mod:`.privacy` (``privacy forget | export | enforce | report``). Each
imports the layers it calls inside its handlers, so that ``--help`` stays fast; this package
is the roof: it may import any layer, and none imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    from tailored.cli import bundle, data, experiment, privacy, serve, train

    parser = argparse.ArgumentParser(
        prog="tailored",
        description="Personalization for large websites: data, training, evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (data, train, bundle, serve, experiment, privacy):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # FAISS reports at INFO which of its builds it tried (and the exception of each miss)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    handler: Handler = args.handler
    from tailored.errors import TailoredError

    try:
        return handler(args)
    except TailoredError as e:
        print(f"tailored {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
