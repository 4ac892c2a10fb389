"""The Helm charts, rendered by the real Helm engine: valid Kubernetes objects, lint clean, schema
enforced, NATS configuration straight from Casebridge, and the security policy of every pod."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from broker.cli import build_parser
from broker.core import publication
from broker.federation import chart, natsconf
from broker.federation.spec import parse_description
from broker.gateway.settings import gateway_settings_from_json
from broker.ops import dashboards
from broker.pki import issuing
from tests.helm.charts import (
    COUNTRY,
    CRD_KINDS,
    HUB,
    HUB_URL,
    K8S_VERSION,
    ROOT,
    console_scripts,
    description,
    example_country_values,
    example_hub_values,
    find,
    nats_conf,
    pod_specs,
    refusal,
    render,
)

CASES = [
    pytest.param(COUNTRY, None, id="country-default"),
    pytest.param(COUNTRY, example_country_values(), id="country-DE-3-agencies-3-servers"),
    pytest.param(HUB, None, id="hub-default"),
    pytest.param(HUB, example_hub_values(), id="hub-3-servers"),
]


@pytest.mark.parametrize(("path", "values"), CASES)
class TestRendered:
    def test_every_object_validates_against_kubernetes(
        self, path: Path, values: dict[str, Any] | None
    ) -> None:
        """Every rendered object passes kubernetes-validate (strict, offline schemas)."""
        objects = render(path, values)
        assert objects
        for obj in objects:
            if obj["kind"] in CRD_KINDS:
                assert obj["apiVersion"] == "monitoring.coreos.com/v1"
                continue
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)

    def test_lint_is_clean(self, path: Path, values: dict[str, Any] | None) -> None:
        """helm lint (strict) reports nothing, not even information."""
        report = helm_python.lint(path, values, strict=True, kube_version=f"v{K8S_VERSION}")
        assert report["errors"] == []
        assert report["messages"] == []

    def test_containers_are_locked_down(self, path: Path, values: dict[str, Any] | None) -> None:
        """No root, no privilege escalation, read-only root fs, no capabilities, resources."""
        for where, pod in pod_specs(render(path, values)):
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] > 0, where
            assert pod.get("hostNetwork") is not True, where
            assert pod["automountServiceAccountToken"] is False, where
            if any("secret" in v for v in pod["volumes"]):
                # Secret files are mode 0440: the non-root user reads them through fsGroup.
                assert pod["securityContext"]["fsGroup"] > 0, where
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                label = f"{where}/{container['name']}"
                security = container["securityContext"]
                assert security["runAsNonRoot"] is True, label
                assert security.get("runAsUser", 1) != 0, label
                assert security["allowPrivilegeEscalation"] is False, label
                assert security["readOnlyRootFilesystem"] is True, label
                assert security["privileged"] is False, label
                assert security["capabilities"] == {"drop": ["ALL"]}, label
                assert "add" not in security["capabilities"], label
                for part in ("requests", "limits"):
                    assert set(container["resources"][part]) >= {"cpu", "memory"}, label

    def test_long_running_containers_have_probes(
        self, path: Path, values: dict[str, Any] | None
    ) -> None:
        """Every container (init steps aside) has liveness and readiness probes; Casebridge's
        own on /healthz and /readyz."""
        for where, pod in pod_specs(render(path, values)):
            for container in pod["containers"]:
                label = f"{where}/{container['name']}"
                live = container["livenessProbe"]["httpGet"]["path"]
                ready = container["readinessProbe"]["httpGet"]["path"]
                if container["name"] == "nats":
                    assert live.startswith("/healthz"), label
                    assert ready.startswith("/healthz"), label
                else:
                    assert (live, ready) == ("/healthz", "/readyz"), label

    def test_no_secret_is_rendered(self, path: Path, values: dict[str, Any] | None) -> None:
        """Secrets are only referenced: no Secret object, no key material anywhere."""
        objects = render(path, values)
        assert not [o for o in objects if o["kind"] == "Secret"]
        text = json.dumps(objects)
        assert "PRIVATE KEY" not in text
        assert "BEGIN CERTIFICATE" not in text
        for _, pod in pod_specs(objects):
            for volume in pod["volumes"]:
                if "secret" in volume:
                    assert set(volume["secret"]) <= {"secretName", "defaultMode"}


class TestSchema:
    @pytest.mark.parametrize(
        ("path", "values", "message"),
        [
            (COUNTRY, {"gateway": {"replicas": 0}}, "at '/gateway/replicas': minimum: got 0"),
            (COUNTRY, {"podSecurity": {"runAsUser": 0}}, "at '/podSecurity/runAsUser'"),
            (COUNTRY, {"nats": {"tls": {"existingSecret": "My_Secret"}}}, "does not match"),
            (COUNTRY, {"nodes": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
            (COUNTRY, {"gateway": {"settings": {"nats": {"url": "tls://x"}}}}, "/gateway/settings"),
            (COUNTRY, {"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
            (COUNTRY, {"networkPolicy": {"hub": []}}, "at '/networkPolicy/hub'"),
            (COUNTRY, {"tlsSecret": "x"}, "additional properties 'tlsSecret' not allowed"),
            (HUB, {"leafService": {"type": "External"}}, "at '/leafService/type'"),
            (HUB, {"tls": {"existingSecret": ""}}, "at '/tls/existingSecret'"),
        ],
    )
    def test_a_wrong_value_fails_with_its_message(
        self, path: Path, values: dict[str, Any], message: str
    ) -> None:
        """A value outside values.schema.json stops rendering and names the value."""
        assert message in refusal(path, values)

    def test_a_three_server_cluster_is_one_or_three(self) -> None:
        """NATS runs on 1 or 3 servers: a generated fragment for 2 is refused by the schema."""
        values = example_country_values()
        values["generated"]["nats"]["replicas"] = 2
        assert "/generated/nats/replicas" in refusal(COUNTRY, values)


class TestNatsConfigIsCasebridges:
    def test_country_config_is_the_generated_one(self) -> None:
        """The NATS ConfigMap holds exactly what Casebridge renders for DE, byte for byte."""
        values = example_country_values()
        config = nats_conf(render(COUNTRY, values))
        want = values["generated"]["nats"]["config"]
        assert config[chart.COUNTRY_CONF] == want[chart.COUNTRY_CONF]
        assert config[chart.SERVER_CONF] == want[chart.SERVER_CONF]

    def test_country_config_carries_users_permissions_domain_and_leaf_rules(self) -> None:
        """The rendered configuration has every agency's permissions, the gateway, domain
        ``de`` and the leaf remote with natsconf's deny rules (the docs/federation.md border)."""
        text = nats_conf(render(COUNTRY, example_country_values()))[chart.COUNTRY_CONF]
        assert 'domain: "de"' in text
        assert f'url: "{HUB_URL}"' in text
        for agency in description().country("DE").agencies:
            perms = natsconf.agency_permissions(agency.agency_id)
            inner = " " * 10  # natsconf's indentation of a user's permission lists
            assert natsconf._strings(perms.publish, inner) in text
            assert natsconf._strings(perms.subscribe, inner) in text
        assert '"CN=de.gateway,OU=gateway,O=Germany border gateway,C=DE" }' in text
        assert natsconf._strings(natsconf.leaf_deny_imports("DE"), "      ") in text
        assert natsconf._strings(natsconf.leaf_deny_exports(), "      ") in text

    def test_country_config_equals_what_federation_init_writes(self, tmp_path: Path) -> None:
        """With paths, ports and hub URL mapped, the chart's configuration of DE is the one
        ``casebridge federation init`` writes for DE (users named by the DNs of its PKI)."""
        from datetime import UTC, datetime

        from broker.federation.launcher import Federation

        fed = Federation.init(description(), tmp_path / "fed", now=datetime.now(UTC))
        server = fed.settings.country("DE")
        local = server.config.read_text(encoding="utf-8")
        generated = chart.country_values(
            description(),
            "DE",
            hub_leaf_url=fed.settings.hub.leaf_url or "",
            shape=chart.ClusterShape(service="casebridge-nats", replicas=1),
        )
        values = chart.as_values(generated)
        text = nats_conf(render(COUNTRY, values))[chart.COUNTRY_CONF]
        pki = fed.settings.pki_dir
        mapping = {
            f"0.0.0.0:{chart.CLIENT_PORT}": f"{server.host}:{server.client_port}",
            f"0.0.0.0:{chart.HTTP_PORT}": f"{server.host}:{server.http_port}",
            str(chart.STORE_DIR): str(server.store_dir),
            "/etc/nats/tls/server-chain.pem": str(pki / "countries/de/server-chain.pem"),
            "/etc/nats/tls/server.key": str(pki / "countries/de/server.key"),
            "/etc/nats/tls/ca.pem": str(pki / "countries/de/ca.pem"),
            "/etc/nats/tls/leaf-chain.pem": str(pki / "countries/de/leaf-chain.pem"),
            "/etc/nats/tls/leaf.key": str(pki / "countries/de/leaf.key"),
            "/etc/nats/tls/root.pem": str(pki / "root/ca.pem"),
        }
        for chart_value, local_value in mapping.items():
            text = text.replace(json.dumps(chart_value), json.dumps(local_value))
        assert text == local

    def test_hub_config_is_the_generated_one(self) -> None:
        """The hub's ConfigMap is Casebridge's hub configuration with one leaf user per country."""
        values = example_hub_values()
        config = nats_conf(render(HUB, values), "casebridge-hub")
        assert config == values["generated"]["nats"]["config"]
        for code in ("DE", "NL", "UA"):
            assert (
                f'"CN=leaf.{code.lower()},O=Casebridge federation demo,C={code}"'
                in config[chart.COUNTRY_CONF]
            )

    def test_hub_keeps_the_directory_stream_on_its_own_volume(self) -> None:
        """The hub runs JetStream domain hub (store on each server's PersistentVolumeClaim) and
        maps the secretariat's publisher certificate DN to the user with Casebridge's
        publisher permissions; no other user may publish on the directory subject."""
        values = example_hub_values()
        objects = render(HUB, values)
        config = nats_conf(objects, "casebridge-hub")[chart.COUNTRY_CONF]
        store = values["generated"]["nats"]["storeDir"]
        assert f'jetstream {{\n  store_dir: "{store}"\n  domain: "hub"\n' in config
        hub = find(objects, "StatefulSet", "casebridge-hub")
        (claim,) = hub["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
        (nats,) = hub["spec"]["template"]["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
        assert store.startswith(mounts["data"] + "/")
        publisher = issuing.publisher_subject("demo").rfc4514_string()
        allowed = natsconf.publisher_permissions().publish
        assert f'{{ user: "{publisher}", permissions: {{' in config
        assert publication.DIRECTORY_SUBJECT in allowed
        # The directory subject is allowed to the publisher only (one occurrence, its list).
        assert config.count(f'"{publication.DIRECTORY_SUBJECT}"') == 1

    @pytest.mark.parametrize(("path", "kind"), [(COUNTRY, "--country"), (HUB, "--hub")])
    def test_default_values_hold_the_generator_output(self, path: Path, kind: str) -> None:
        """values.yaml's ``generated`` is what render-nats prints for the example (NL, hub)."""
        defaults = yaml.safe_load((path / "values.yaml").read_text(encoding="utf-8"))
        if kind == "--hub":
            shape = chart.ClusterShape(service="casebridge-hub", replicas=1)
            want = chart.hub_values(description(), shape=shape)
        else:
            shape = chart.ClusterShape(service="casebridge-nats", replicas=1)
            want = chart.country_values(description(), "NL", hub_leaf_url=HUB_URL, shape=shape)
        assert defaults["generated"] == want


class TestObjects:
    def test_example_country_runs_what_it_should(self) -> None:
        """Three servers (one configuration with natsconf's cluster block), two gateways with
        a PDB, one node per agency with its own volume, Secret, API and console Services."""
        objects = render(COUNTRY, example_country_values())
        nats = find(objects, "StatefulSet", "casebridge-nats")
        assert nats["spec"]["replicas"] == 3
        nats_budget = find(objects, "PodDisruptionBudget", "casebridge-nats")
        assert nats_budget["spec"]["maxUnavailable"] == 1
        gateway = find(objects, "Deployment", "cb-gateway")
        assert gateway["spec"]["replicas"] == 2
        assert find(objects, "PodDisruptionBudget", "cb-gateway")["spec"]["minAvailable"] == 1
        settings = json.loads(find(objects, "ConfigMap", "cb-gateway")["data"]["settings.json"])
        assert settings["agency"] == "de.gateway"
        assert settings["fair_share"] == {"sender_rate": 10, "sender_burst": 100}
        for slug, secret in [
            ("de-lka-berlin", "lka-node-keys"),
            ("de-sta-berlin", "casebridge-de-sta-berlin"),
            ("de-fbs-berlin", "casebridge-de-fbs-berlin"),
        ]:
            node = find(objects, "StatefulSet", f"cb-{slug}")
            pod = node["spec"]["template"]["spec"]
            assert node["spec"]["replicas"] == 1
            assert node["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "store"
            keys = next(v for v in pod["volumes"] if v["name"] == "keys")
            assert keys["secret"]["secretName"] == secret
            find(objects, "Service", f"cb-{slug}")
            find(objects, "Service", f"cb-{slug}-console")

    @pytest.mark.parametrize("values", [None, example_country_values()], ids=["NL", "DE"])
    def test_gateway_settings_hold_no_agreement_key_and_no_token(
        self, values: dict[str, Any] | None
    ) -> None:
        """The gateway's rendered settings name no key-agreement key and no API token, load as
        gateway settings, and every node's settings still name both."""
        objects = render(COUNTRY, values)
        text = find(objects, "ConfigMap", "cb-gateway")["data"]["settings.json"]
        settings = json.loads(text)
        assert set(settings["keys"]) == {"signing_key", "signing_cert"}
        assert "token_file" not in settings["api"]
        assert "agreement" not in text
        assert "api-token" not in text
        loaded = gateway_settings_from_json(settings, base=Path("/"))
        assert loaded.agency.endswith(".gateway")
        nodes = [
            json.loads(o["data"]["settings.json"])
            for o in objects
            if o["kind"] == "ConfigMap"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == "node"
        ]
        assert nodes
        for node in nodes:
            assert node["keys"]["agreement_key"] == "/etc/casebridge/keys/agreement.key"
            assert node["api"]["token_file"] == "/etc/casebridge/keys/api-token"  # noqa: S105 - a path

    def test_network_policies_confine_nats_clients_and_servers(self) -> None:
        """Nodes and gateways may reach only NATS (and DNS); NATS only the hub's leaf port and
        its own cluster, and it accepts clients only from this release's nodes and gateways."""
        objects = render(COUNTRY, example_country_values())
        nats_pods = {"app.kubernetes.io/component": "nats"}
        for name in ("cb-nodes", "cb-gateway"):
            policy = find(objects, "NetworkPolicy", name)["spec"]
            assert policy["policyTypes"] == ["Ingress", "Egress"]
            to_nats, dns = policy["egress"]
            assert to_nats["to"][0]["podSelector"]["matchLabels"].items() >= nats_pods.items()
            assert to_nats["ports"] == [{"protocol": "TCP", "port": 4222}]
            assert {p["port"] for p in dns["ports"]} == {53}
        nats = find(objects, "NetworkPolicy", "cb-nats")["spec"]
        hub, cluster, dns = nats["egress"]
        assert hub["ports"] == [{"protocol": "TCP", "port": 7422}]
        assert cluster["ports"] == [{"protocol": "TCP", "port": 6222}]
        clients = nats["ingress"][0]
        selector = clients["from"][0]["podSelector"]["matchLabels"]
        assert selector["casebridge.eu/nats-client"] == "true"
        assert clients["ports"] == [{"protocol": "TCP", "port": 4222}]
        # No leaf listener: nothing may connect to a leaf port of the country's servers.
        ingress_ports = {p["port"] for rule in nats["ingress"] for p in rule["ports"]}
        assert 7422 not in ingress_ports
        assert "leafnodes {\n  remotes" in nats_conf(objects)[chart.COUNTRY_CONF]

    def test_monitoring_comes_from_ops(self) -> None:
        """The PrometheusRule is ops/prometheus/alerts.yml; the dashboards ConfigMap holds
        ops/grafana/dashboards, labelled for the Grafana sidecar."""
        objects = render(COUNTRY, None)
        rule = find(objects, "PrometheusRule", "cb")
        alerts = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text(encoding="utf-8"))
        assert rule["spec"] == alerts
        board = find(objects, "ConfigMap", "cb-dashboards")
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
        files = sorted(p.name for p in dashboards.OUT_DIR.glob("*.json"))
        assert sorted(board["data"]) == files
        for name in files:
            assert board["data"][name] == (dashboards.OUT_DIR / name).read_text(encoding="utf-8")
        monitor = find(objects, "ServiceMonitor", "cb")["spec"]
        jobs = {
            o["metadata"]["labels"].get("casebridge.eu/job")
            for o in objects
            if o["kind"] == "Service"
        }
        assert monitor["jobLabel"] == "casebridge.eu/job"
        assert jobs >= {"casebridge-node", "casebridge-gateway", "casebridge-nats"}


class TestCommands:
    def test_every_command_is_a_console_script_with_those_flags(self) -> None:
        """Each container command (init steps too) is a console script of pyproject.toml
        and its real argparse parser accepts the chart's arguments."""
        scripts = console_scripts()
        seen = set()
        for path, values in [(COUNTRY, None), (COUNTRY, example_country_values())]:
            for where, pod in pod_specs(render(path, values)):
                for container in [*pod.get("initContainers", []), *pod["containers"]]:
                    command = container["command"]
                    if command[0] == "nats-server":
                        continue  # the official NATS image
                    assert command[0] in scripts, f"{where}: {command[0]}"
                    module, _, _ = scripts[command[0]].partition(":")
                    parser = (
                        build_parser()
                        if module == "broker.cli"
                        else importlib.import_module(module).build_parser()
                    )
                    args = parser.parse_args(command[1:])
                    assert isinstance(args, argparse.Namespace)
                    if module == "broker.cli":
                        assert callable(args.func), where
                    seen.add(" ".join(command[:3]))
        assert seen == {
            "casebridge federation streams",
            "casebridge gateway --settings",
            "casebridge node --settings",
            "casebridge-nats-exporter --config /etc/casebridge/nats-exporter.json",
        }


class TestGatewayLedger:
    def test_persistent_ledgers_make_the_gateways_a_stateful_set(self) -> None:
        """gateway.persistence: each gateway replica keeps its ledger on its own volume."""
        values = example_country_values()
        values["gateway"]["persistence"] = {"enabled": True, "storageClassName": "fast"}
        objects = render(COUNTRY, values)
        assert not [o for o in objects if o["kind"] == "Deployment"]
        gateway = find(objects, "StatefulSet", "cb-gateway")
        assert gateway["spec"]["replicas"] == 2
        claim = gateway["spec"]["volumeClaimTemplates"][0]
        assert claim["metadata"]["name"] == "ledger"
        assert claim["spec"]["storageClassName"] == "fast"
        volumes = [v["name"] for v in gateway["spec"]["template"]["spec"]["volumes"]]
        assert "ledger" not in volumes
        for obj in objects:
            if obj["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


class TestNames:
    def test_longest_names_fit_kubernetes_limits(self) -> None:
        """With a long release name and agency ids of the longest kind, every object name is a
        DNS label (<= 63) and every StatefulSet name leaves room for its revision hash (<= 52)."""
        raw = description().to_json()
        raw["task_forces"] = []
        for country in raw["countries"]:
            if country["code"] == "DE":
                country["agencies"] = [
                    {"id": "de." + "a" * 59 + f"-{i}", "kind": "ngo", "name": f"NGO {i}"}
                    for i in range(2)
                ]
        generated = chart.country_values(
            parse_description(raw),
            "DE",
            hub_leaf_url=HUB_URL,
            shape=chart.ClusterShape(service="casebridge-nats", replicas=3),
        )
        objects = render(COUNTRY, chart.as_values(generated), name="a-very-long-release-name-x")
        for obj in objects:
            name = obj["metadata"]["name"]
            assert len(name) <= 63, name
            if obj["kind"] == "StatefulSet":
                assert len(name) <= 52, name
        nodes = [
            o for o in objects if o["kind"] == "StatefulSet" and "nats" not in o["metadata"]["name"]
        ]
        assert len({o["metadata"]["name"] for o in nodes}) == 2
