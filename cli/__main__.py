"""``python -m tailored.cli``: the ``tailored`` command."""

from tailored.cli import main

raise SystemExit(main())
