"""The sans-io core of Casebridge.

Envelope, sealing (JOSE), PKI validation, schemas, policy and evidence logic. This package must
never import asyncio, nats or aiohttp, never read a clock (``now`` is always passed in) and never
touch the network. Files are read only where a function says so in its name (``load_*``).
"""
