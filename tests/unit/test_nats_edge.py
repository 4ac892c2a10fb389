"""The shared NATS edge translates nats-py's failures once, at the boundary (broker/nats)."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from broker.errors import LocalError, Reason, TransportError
from broker.nats import map_exceptions
from broker.node.errors import TransportUnavailable


class TestMapExceptions:
    @pytest.mark.parametrize(
        "raised",
        [
            nats.errors.TimeoutError(),
            nats.errors.NoServersError(),
            nats.js.errors.NoStreamResponseError(),
            TimeoutError(),
        ],
        ids=["nats-timeout", "no-servers", "jetstream", "builtin-timeout"],
    )
    def test_nats_failures_become_a_transport_error(self, raised: Exception) -> None:
        """A nats-py or timeout failure in the block is raised as TransportError (a local
        fault, transport_unavailable), chained to the original."""
        with pytest.raises(TransportError) as info, map_exceptions("publish on cb.submit.x"):
            raise raised
        assert isinstance(info.value, LocalError)
        assert info.value.reason is Reason.TRANSPORT_UNAVAILABLE
        assert info.value.detail.startswith("publish on cb.submit.x: ")
        assert info.value.__cause__ is raised

    def test_the_caller_chooses_its_error_type(self) -> None:
        """The node maps to its own TransportUnavailable (503 at its API)."""
        with (
            pytest.raises(TransportUnavailable) as info,
            map_exceptions("ack failed", into=TransportUnavailable),
        ):
            raise nats.errors.ConnectionClosedError()
        assert info.value.http_status == 503

    def test_other_exceptions_pass_unchanged(self) -> None:
        """A bug (not a NATS failure) is not disguised as a transport fault."""
        with pytest.raises(KeyError), map_exceptions("anything"):
            raise KeyError("bug")
