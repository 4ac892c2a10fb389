"""``python -m broker.cli`` = ``casebridge`` (used by ``federation up`` to start processes)."""

from broker.cli import main

raise SystemExit(main())
