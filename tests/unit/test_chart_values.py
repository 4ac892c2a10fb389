"""The Casebridge-generated part of the Helm charts' values (``casebridge federation
render-nats``), the gateway's /readyz, and the container image's user."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from prometheus_client import CollectorRegistry

from broker.cli import main
from broker.errors import ConfigError
from broker.federation import chart
from broker.federation.launcher import Federation
from broker.federation.spec import load_description
from broker.metrics import metrics_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "federation.example.yaml"
HUB_URL = "tls://hub.casebridge.test:7422"


class TestRenderNats:
    def test_prints_the_country_values_fragment(self, capsys: pytest.CaptureFixture[str]) -> None:
        """render-nats --country prints {generated: ...} exactly as country_values builds it."""
        code = main(
            [
                *("federation", "render-nats", str(EXAMPLE), "--country", "UA"),
                *("--hub-url", HUB_URL, "--servers", "3", "--service", "ua-nats"),
            ]
        )
        assert code == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        shape = chart.ClusterShape(service="ua-nats", replicas=3)
        want = chart.country_values(
            load_description(EXAMPLE), "UA", hub_leaf_url=HUB_URL, shape=shape
        )
        assert printed == {"generated": want}
        assert [a["id"] for a in want["agencies"]] == ["ua.npu", "ua.pgo", "ua.hotline-ngo"]
        assert want["peers"] == ["DE", "NL"]

    def test_writes_the_hub_fragment_to_a_file(self, tmp_path: Path) -> None:
        """render-nats --hub -o FILE writes the hub's fragment, configuration as a text block."""
        out = tmp_path / "hub.yaml"
        assert main(["federation", "render-nats", str(EXAMPLE), "--hub", "-o", str(out)]) == 0
        text = out.read_text(encoding="utf-8")
        assert text.startswith(chart.HEADER)
        assert "casebridge.conf: |\n" in text
        generated = yaml.safe_load(text)["generated"]
        assert generated["countries"] == ["DE", "NL", "UA"]
        assert "leafnodes {" in generated["nats"]["config"][chart.COUNTRY_CONF]

    def test_country_needs_the_hub_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --hub-url a country cannot be rendered: a clear error, status 2."""
        assert main(["federation", "render-nats", str(EXAMPLE), "--country", "DE"]) == 2
        assert "--hub-url" in capsys.readouterr().err

    def test_unknown_country_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A country not in the federation file is a ConfigError naming it."""
        args = ["federation", "render-nats", str(EXAMPLE), "--country", "FR", "--hub-url", HUB_URL]
        assert main(args) == 2
        assert "'FR'" in capsys.readouterr().err

    def test_two_servers_are_refused(self) -> None:
        """A JetStream cluster runs 1 or 3 servers, never 2 (no quorum through a failure)."""
        with pytest.raises(ConfigError, match="1 or 3"):
            chart.ClusterShape(service="nats", replicas=2)
        with pytest.raises(ConfigError, match="service name"):
            chart.ClusterShape(service="Nats_1", replicas=1)

    def test_derived_dns_are_the_ones_the_pki_issues(self, tmp_path: Path) -> None:
        """User DNs derived from the description equal those read from a generated PKI, for
        every country's agencies and gateway, the hub's leaf users and its directory publisher."""
        description = load_description(EXAMPLE)
        fed = Federation.init(description, tmp_path / "fed", now=datetime.now(UTC))
        pki = fed.settings.pki_dir
        for code in description.codes:
            shape = chart.ClusterShape(service="casebridge-nats", replicas=1)
            derived = chart.country_values(description, code, hub_leaf_url=HUB_URL, shape=shape)
            read = chart.country_values(
                description, code, hub_leaf_url=HUB_URL, shape=shape, pki=pki
            )
            assert derived == read
        shape = chart.ClusterShape(service="casebridge-hub", replicas=1)
        assert chart.hub_values(description, shape=shape) == chart.hub_values(
            description, shape=shape, pki=pki
        )
        # The route identity of a 3-server hub or country: the DN of the certificate in use.
        hub_cert = x509.load_pem_x509_certificate((pki / "hub/hub.pem").read_bytes())
        three = chart.ClusterShape(service="casebridge-hub", replicas=3)
        config = chart.hub_values(description, shape=three, pki=pki)["nats"]["config"]
        route_user = f'authorization {{ user: "{hub_cert.subject.rfc4514_string()}" }}'
        assert route_user in config[chart.COUNTRY_CONF]
        server_cert = x509.load_pem_x509_certificate((pki / "countries/de/server.pem").read_bytes())
        three = chart.ClusterShape(service="casebridge-nats", replicas=3)
        config = chart.country_values(
            description, "DE", hub_leaf_url=HUB_URL, shape=three, pki=pki
        )["nats"]["config"]
        route_user = f'authorization {{ user: "{server_cert.subject.rfc4514_string()}" }}'
        assert route_user in config[chart.COUNTRY_CONF]


class TestNames:
    @pytest.mark.parametrize(
        "agency_id", ["de.lka-berlin", "de." + "a" * 63, "de." + "a" * 62 + "b"]
    )
    def test_slugs_are_short_kubernetes_names(self, agency_id: str) -> None:
        """An agency's name part is a DNS label of at most 40 characters."""
        slug = chart.agency_slug(agency_id)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", slug)
        assert len(slug) <= chart.MAX_SLUG

    def test_long_ids_never_share_a_slug(self) -> None:
        """Two long ids with the same head get different slugs (a digest of the whole id)."""
        first, second = "de." + "a" * 62 + "b", "de." + "a" * 62 + "c"
        assert chart.agency_slug(first) != chart.agency_slug(second)
        assert chart.agency_slug("de.lka-berlin") == "de-lka-berlin"

    def test_country_cluster_is_natsconfs_with_tls_routes_to_every_pod(self) -> None:
        """A 3-server country's configuration carries natsconf's cluster block: the pod's name,
        TLS routes to the three pods, mapped to the server certificate DN; server.conf only
        includes it; one server has no cluster block."""
        three = chart.country_values(
            load_description(EXAMPLE),
            "DE",
            hub_leaf_url=HUB_URL,
            shape=chart.ClusterShape(service="nats", replicas=3),
        )["nats"]["config"]
        conf = three[chart.COUNTRY_CONF]
        assert "server_name: $POD_NAME\n" in conf
        cluster = conf[conf.index("cluster {") :]
        assert '  tls {\n    cert_file: "/etc/nats/tls/server-chain.pem"' in cluster
        assert "    verify_and_map: true\n" in cluster
        assert '"CN=nats,OU=nats-server,O=Casebridge federation demo,C=DE" }' in cluster
        for i in range(3):
            assert f'"nats-route://nats-{i}.nats:6222"' in cluster
        assert three[chart.SERVER_CONF] == chart.HEADER + 'include "./casebridge.conf"\n'
        one = chart.country_values(
            load_description(EXAMPLE),
            "DE",
            hub_leaf_url=HUB_URL,
            shape=chart.ClusterShape(service="nats", replicas=1),
        )["nats"]["config"]
        assert "cluster {" not in one[chart.COUNTRY_CONF]
        assert 'server_name: "cb-de"' in one[chart.COUNTRY_CONF]

    def test_hub_cluster_has_tls_routes_mapped_to_the_hub_certificate(self) -> None:
        """A 3-server hub carries natsconf's cluster block too: the pod's name, TLS routes to
        the three pods mapped to the hub certificate's DN; one hub server has none."""
        description = load_description(EXAMPLE)
        three = chart.hub_values(description, shape=chart.ClusterShape(service="hub", replicas=3))[
            "nats"
        ]["config"]
        conf = three[chart.COUNTRY_CONF]
        assert "server_name: $POD_NAME\n" in conf
        cluster = conf[conf.index("cluster {") : conf.index("accounts {")]
        assert "    verify_and_map: true\n" in cluster
        assert 'authorization { user: "CN=hub,OU=hub,O=Casebridge federation demo" }' in cluster
        for i in range(3):
            assert f'"nats-route://hub-{i}.hub:6222"' in cluster
        assert three[chart.SERVER_CONF] == chart.include_only()
        one = chart.hub_values(description, shape=chart.ClusterShape(service="hub", replicas=1))
        assert "cluster {" not in one["nats"]["config"][chart.COUNTRY_CONF]
        assert 'server_name: "cb-hub"' in one["nats"]["config"][chart.COUNTRY_CONF]


class TestReadiness:
    @pytest.mark.parametrize(
        ("state", "status", "body"),
        [
            ((True, "nats connected"), 200, "ready"),
            ((False, "nats disconnected"), 503, "not_ready"),
        ],
    )
    def test_readyz_answers_the_process_readiness(
        self, state: tuple[bool, str], status: int, body: str
    ) -> None:
        """/readyz of the metrics app (gateways) answers 200 or 503 with the reason."""

        async def run() -> None:
            app = metrics_app(CollectorRegistry(), lambda: state)
            async with TestClient(TestServer(app)) as client:
                answer = await client.get("/readyz")
                assert answer.status == status
                assert await answer.json() == {"status": body, "detail": state[1]}
                assert (await client.get("/healthz")).status == 200

        asyncio.run(run())


class TestImage:
    def test_image_runs_as_the_charts_non_root_user(self) -> None:
        """The Dockerfile's final stage runs as the uid/gid the charts set, never root."""
        text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        stages = text.split("\nFROM ")
        final = stages[-1]
        assert final.startswith("${PYTHON_IMAGE} AS casebridge")
        assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
        for chart_dir in ("casebridge-country", "casebridge-hub"):
            values = yaml.safe_load((ROOT / "helm" / chart_dir / "values.yaml").read_text())
            assert values["podSecurity"]["runAsUser"] == 10001
            assert values["podSecurity"]["runAsGroup"] == 10001
        ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        assert ignored[1] == "*"
        assert {"!broker/", "!schemas/", "!pyproject.toml"} <= set(ignored)
