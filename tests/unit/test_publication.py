"""Published directories and policies: what may replace the one in force
(broker/core/publication.py), the permissions and stream layout that carry them
(broker/federation/natsconf.py, distribution.py), and clustered countries in the federation
file and the server configuration."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from broker.core import publication as pub
from broker.core.policy import sign_policy
from broker.errors import ConfigError
from broker.federation import distribution, natsconf
from broker.federation.directory_cache import directory_cache, startup_directory, write_cache
from broker.federation.spec import parse_description
from broker.pki.dev import DevFederation

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "docs" / "policies"


def _published(dev: DevFederation, now: datetime, serial: int = 2) -> pub.Published:
    signed = dev.sign_directory(now=now, serial=serial)
    published = pub.Published(root_cert=dev.root.cert, directory=dev.directory)
    change = published.offer(pub.DIRECTORY_SUBJECT, signed, now=now)
    assert change is not None
    return published


def _policy(
    dev: DevFederation, code: str, *, version: int | None = None, signer: str = ""
) -> bytes:
    text = (POLICIES / f"{code.lower()}.yaml").read_text(encoding="utf-8")
    if version is not None:
        lines = [
            f"version: {version}" if ln.startswith("version:") else ln for ln in text.split("\n")
        ]
        text = "\n".join(lines)
    ca = dev.country(signer or code).ca
    return sign_policy(text.encode(), ca_key=ca.key, ca_cert=ca.cert).encode()


class TestDirectoryUpdates:
    """A directory replaces the one in force only if newer, unexpired and signed by the root."""

    def test_newer_directory_is_taken(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Serial 2 over serial 1: a change carrying the new directory, now in force."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        signed = dev_federation.sign_directory(now=fixed_now, serial=2, revoked=["de.sta-berlin"])
        change = published.offer(pub.DIRECTORY_SUBJECT, signed, now=fixed_now)
        assert change is not None
        assert change.directory is not None
        assert published.directory.serial == 2

    def test_same_serial_other_bytes_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Serial 2 in force, another document with serial 2: refused, the first stays; the
        very same bytes again are no change and no refusal."""
        published = _published(dev_federation, fixed_now)
        again = dev_federation.sign_directory(now=fixed_now - timedelta(minutes=1), serial=2)
        first = published.directory
        with pytest.raises(pub.PublicationRefused) as caught:
            # Another document (issued at another time) under serial 2.
            published.offer(pub.DIRECTORY_SUBJECT, again, now=fixed_now)
        assert caught.value.refusal is pub.Refusal.ROLLBACK
        assert published.directory is first
        signed = dev_federation.sign_directory(now=fixed_now, serial=3)
        assert published.offer(pub.DIRECTORY_SUBJECT, signed, now=fixed_now) is not None
        assert published.offer(pub.DIRECTORY_SUBJECT, signed, now=fixed_now) is None

    def test_document_in_force_published_again_is_no_change(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """The directory a process started from, published later: no change, no refusal."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        change = published.offer(
            pub.DIRECTORY_SUBJECT, dev_federation.directory_bytes, now=fixed_now
        )
        assert change is None
        assert published.directory is dev_federation.directory

    def test_older_directory_is_refused_even_if_valid(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Serial 2 after serial 3: refused as a rollback; serial 3 stays in force."""
        published = _published(dev_federation, fixed_now, serial=3)
        older = dev_federation.sign_directory(now=fixed_now, serial=2)
        with pytest.raises(pub.PublicationRefused) as caught:
            published.offer(pub.DIRECTORY_SUBJECT, older, now=fixed_now)
        assert caught.value.refusal is pub.Refusal.ROLLBACK
        assert published.directory.serial == 3

    def test_expired_directory_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """A newer serial that expired already: refused as expired."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        old = dev_federation.sign_directory(
            now=fixed_now - timedelta(days=3), serial=5, valid_for=timedelta(days=1)
        )
        with pytest.raises(pub.PublicationRefused) as caught:
            published.offer(pub.DIRECTORY_SUBJECT, old, now=fixed_now)
        assert caught.value.refusal is pub.Refusal.EXPIRED
        assert published.directory.serial == dev_federation.directory.serial

    def test_bad_signature_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """One changed character in the signature: refused, nothing changes."""
        signed = dev_federation.sign_directory(now=fixed_now, serial=2)
        text = signed.decode()
        cut = text.rindex(".") + 10
        bad = (text[:cut] + ("A" if text[cut] != "A" else "B") + text[cut + 1 :]).encode()
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        with pytest.raises(pub.PublicationRefused) as caught:
            published.offer(pub.DIRECTORY_SUBJECT, bad, now=fixed_now)
        assert caught.value.refusal is pub.Refusal.SIGNATURE
        assert published.directory is dev_federation.directory


class TestPolicyUpdates:
    """A peer's policy is taken only signed by its own country CA and not older."""

    def test_policy_signed_by_its_country_is_taken(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """UA's signed policy on UA's subject: held as a peer policy."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        change = published.offer(
            pub.policy_subject("UA"), _policy(dev_federation, "UA"), now=fixed_now
        )
        assert change is not None
        assert change.country == "UA"
        assert set(published.peer_policies("DE")) == {"UA"}
        assert published.peer_policies("UA") == {}

    def test_policy_of_another_country_on_the_subject_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """DE's policy, signed by DE, published on UA's subject: refused (signature/country)."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        with pytest.raises(pub.PublicationRefused) as caught:
            published.offer(pub.policy_subject("UA"), _policy(dev_federation, "DE"), now=fixed_now)
        assert caught.value.refusal is pub.Refusal.SIGNATURE
        assert published.policies == {}

    def test_older_policy_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Version 9 then version 8: refused as a rollback; version 9 stays."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        published.offer(
            pub.policy_subject("UA"), _policy(dev_federation, "UA", version=9), now=fixed_now
        )
        with pytest.raises(pub.PublicationRefused) as caught:
            published.offer(
                pub.policy_subject("UA"), _policy(dev_federation, "UA", version=8), now=fixed_now
            )
        assert caught.value.refusal is pub.Refusal.ROLLBACK
        assert published.policies["UA"].version == 9

    def test_unknown_subject_is_refused(
        self, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Anything but the directory and policy subjects: refused as unknown."""
        published = pub.Published(
            root_cert=dev_federation.root.cert, directory=dev_federation.directory
        )
        with pytest.raises(pub.PublicationRefused) as caught:
            published.offer("cb.pub.other", b"x", now=fixed_now)
        assert caught.value.refusal is pub.Refusal.UNKNOWN


class TestLayout:
    """Names, permissions and streams that carry the publications."""

    def test_agencies_only_read_publications(self) -> None:
        """An agency may direct-get PUBLISHED and never publish on cb.pub.>."""
        perms = natsconf.agency_permissions("de.lka-berlin")
        assert "$JS.API.DIRECT.GET.PUBLISHED" in perms.publish
        assert not [p for p in perms.publish if p.startswith("cb.pub")]

    def test_leaf_users_never_publish_documents(self) -> None:
        """A country's hub user sources the hub directory and its peers' policies, publishes
        no document subject, and receives only deliveries addressed to it."""
        perms = natsconf.hub_leaf_permissions("de", ["ua", "nl"])
        assert "$JS.hub.API.CONSUMER.CREATE.DIRECTORY" in perms.publish
        assert "$JS.ua.API.CONSUMER.CREATE.PUBLISHED" in perms.publish
        assert not [p for p in perms.publish if p.startswith("cb.pub")]
        assert "cb.xp.*.de.>" in perms.subscribe
        assert "cb.xp.de.>" in perms.publish

    def test_published_stream_sources_hub_and_peer_policies_only(self) -> None:
        """DE's PUBLISHED: own policy subject; sources the hub's DIRECTORY and UA's policy."""
        config = distribution.published_config("DE", ["UA"], replicas=3)
        assert config.subjects == ["cb.pub.policy.de"]
        assert config.num_replicas == 3
        sources = {(src.name, src.filter_subject, src.external.api) for src in config.sources or []}  # type: ignore[union-attr]
        assert sources == {
            ("DIRECTORY", None, "$JS.hub.API"),
            ("PUBLISHED", "cb.pub.policy.ua", "$JS.ua.API"),
        }

    def test_publication_subjects_never_cross_a_leaf_plainly(self) -> None:
        """cb.pub.> is neither exported nor imported by a country's leaf connection."""
        assert pub.PUBLISHED_SUBJECTS in natsconf.leaf_deny_exports()
        assert pub.PUBLISHED_SUBJECTS in natsconf.leaf_deny_imports("de")


class TestClusteredCountry:
    """A country may run a 3-server cluster, described in the federation file."""

    BASE: ClassVar[dict[str, Any]] = {
        "federation": "clu",
        "countries": [
            {"code": "DE", "name": "Germany", "eu": True, "servers": 3, "agencies": []},
            {"code": "UA", "name": "Ukraine", "eu": False},
        ],
    }

    def test_servers_parsed_and_round_tripped(self) -> None:
        """servers: 3 is kept, and written back by to_json; 1 is the default."""
        description = parse_description(self.BASE)
        assert [c.servers for c in description.countries] == [3, 1]
        assert parse_description(description.to_json()) == description

    def test_other_sizes_refused(self) -> None:
        """Only 1 or 3 servers (a 2-server cluster has no quorum when one fails)."""
        bad = {
            **self.BASE,
            "countries": [{"code": "DE", "name": "Germany", "eu": True, "servers": 2}],
        }
        with pytest.raises(ConfigError, match="servers"):
            parse_description(bad)

    def test_cluster_block_rendered_with_tls_route_auth(self, tmp_path: Path) -> None:
        """A member's configuration names its cluster, its name, and its routes with TLS
        verified against the CA and mapped to the servers' certificate DN (no password)."""
        tls = natsconf.TlsFiles(
            cert_file=tmp_path / "c", key_file=tmp_path / "k", ca_file=tmp_path / "a"
        )
        text = natsconf.render_country(
            natsconf.CountryConf(
                federation_id="clu",
                code="DE",
                listen=natsconf.Listen(host="127.0.0.1", client_port=1, http_port=2),
                store_dir=tmp_path,
                tls=tls,
                leaf_tls=tls,
                hub_leaf_url="tls://127.0.0.1:3",
                peers=["UA"],
                agencies=[],
                gateway=natsconf.CertUser(name="de.gateway", dn="CN=de.gateway"),
                cluster=natsconf.ClusterConf(
                    name="cb-de",
                    member=2,
                    port=4,
                    routes=["127.0.0.1:5", "127.0.0.1:6"],
                    tls=tls,
                    route_dn="CN=localhost,OU=nats-server,C=DE",
                ),
            )
        )
        assert 'server_name: "cb-de-2"' in text
        cluster = text[text.index("cluster {") : text.index("accounts {")]
        # Routes: mutual TLS, verified against the CA and mapped to the servers' DN only.
        tls_block = cluster[cluster.index("  tls {") : cluster.index("  }\n") + 4]
        assert f'    cert_file: "{tls.cert_file}"\n' in tls_block
        assert f'    ca_file: "{tls.ca_file}"\n' in tls_block
        assert "    verify_and_map: true\n" in tls_block
        assert 'authorization { user: "CN=localhost,OU=nats-server,C=DE" }' in cluster
        assert '"nats-route://127.0.0.1:5"' in cluster
        assert "password" not in cluster


class TestStartupDirectory:
    """A restarted process starts on the newest verified directory: file or cache."""

    def test_newer_cache_wins_older_or_bad_cache_ignored(
        self, tmp_path: Path, dev_federation: DevFederation, fixed_now: datetime
    ) -> None:
        """Cache serial 5 over file serial 4; cache serial 3 or garbage: the file."""
        configured = tmp_path / "directory.jws"
        configured.write_bytes(dev_federation.sign_directory(now=fixed_now, serial=4))
        cache = directory_cache(tmp_path / "node.sqlite")
        root = dev_federation.root.cert
        assert startup_directory(configured, cache, root_cert=root, now=fixed_now) == (
            configured.read_bytes()
        )
        newer = dev_federation.sign_directory(now=fixed_now, serial=5)
        write_cache(cache, newer)
        assert startup_directory(configured, cache, root_cert=root, now=fixed_now) == newer
        write_cache(cache, dev_federation.sign_directory(now=fixed_now, serial=3))
        assert startup_directory(configured, cache, root_cert=root, now=fixed_now) == (
            configured.read_bytes()
        )
        write_cache(cache, b"not a directory")
        assert startup_directory(configured, cache, root_cert=root, now=fixed_now) == (
            configured.read_bytes()
        )
