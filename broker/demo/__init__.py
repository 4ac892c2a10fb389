"""The demos: a whole local federation with synthetic traffic (:mod:`broker.demo.federation`)
and the same story in one process without servers (:mod:`broker.demo.offline`).

Run through ``casebridge demo`` (``broker/cli/demo.py``). Synthetic data only; must never be
imported by the node, the gateway or the core.
"""
