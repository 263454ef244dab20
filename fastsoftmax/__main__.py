"""``python -m fastsoftmax``: the same as the ``fastsoftmax`` console script."""

from fastsoftmax.cli import main

raise SystemExit(main())
