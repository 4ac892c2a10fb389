"""The adapter node: one per agency, between its case workers and the NATS federation.

Modules, by what they hold:

* ``model``     — value objects: drafts, send results, inbox/outbox rows, evidence records;
* ``errors``    — node-local errors of the API edge (not found, unauthorized, ...);
* ``clock``     — the injected clock and id source;
* ``transport`` — the ``Transport`` seam to NATS and the in-memory double ``MemoryTransport``;
* ``store``     — SQLite: outbox, inbox, evidence, threads, replay store, idempotency keys;
* ``policy``    — the seams to the policy engine (``Preflight``, ``RecipientCheck``) and
  their policy-free defaults; ``policy_engine`` adapts ``broker.core.policy`` to them;
* ``evidence``  — building evidence headers and bodies (pure);
* ``service``   — ``Node``: send, receive, evidence, read (no NATS, no HTTP);
* ``api``       — the local HTTP API (aiohttp);
* ``settings``  — the frozen ``Settings`` read from a JSON file;
* ``runtime``   — assembling a node from settings and running it.

Nothing in this package is imported by ``broker.core``.
"""
