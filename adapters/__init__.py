"""Adapters between an agency's node and the case-management system it already runs.

Installed as the package ``broker.adapters`` (the top-level ``adapters/`` directory of the
source tree, like ``schemas/`` is ``broker.schemas``); each is started as
``casebridge adapter NAME --settings FILE`` (:mod:`broker.cli.adapter`):

* :mod:`.folder`: a watched drop folder for systems that can only write and read files;
* :mod:`.mapping`: turns a case system's export (CSV, JSON lines) into drafts through a
  declarative YAML mapping;
* :mod:`.webhook_receiver`: the reference receiver of the node's signed webhooks, writing
  into a SQLite "case system" (the pattern integrators copy).

What they must never do
    Read the node's database or keys, or bypass its API: an adapter is one more API client,
    with its own credentials, and everything it does is checked and logged by the node.
"""
