"""Casebridge: cross-border case-exchange broker.

The running parts (CLI, node, gateway, federation launcher) live here; the pure core lives in
``broker.core``.
"""

__version__ = "0.1.0"
