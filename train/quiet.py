"""Lightning's advertising ("Tip: ... try installing ...") kept out of every command's output:
a log file or a job's output gets what the run did, not offers."""

from __future__ import annotations

import logging

__all__ = ["quiet_lightning"]

_LOGGERS = ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


_TIPS = _NoTips()


def quiet_lightning() -> None:
    """Filter the tips out of Lightning's loggers (once a process; any Trainer after)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)
