"""``python -m engine`` is the same as the ``certus`` console script."""

from engine.cli.main import main

raise SystemExit(main())
