"""Casebridge: cross-border case-exchange broker (running parts live here, the pure core in ``broker.core``)."""

__version__ = "0.1.0"
