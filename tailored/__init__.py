"""tailored: personalization for large websites.

This folder is the floor of the package: :mod:`tailored.config` (typed configuration, checked
once), :mod:`tailored.errors` and :mod:`tailored.paths`. Every layer imports them and they
import none of the layers; the layers themselves are sibling folders mapped to
``tailored.data``, ``tailored.train``, ``tailored.retrieval``, ``tailored.bundle``,
``tailored.serve`` and ``tailored.cli`` (README, "Layout"). The links in this folder to
them (``data -> ../data``...) are for import-linter, which walks this folder; installs map
the folders through pyproject's ``package-dir``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
