"""The fleet manifest (deploy/k8s/edge-run.yaml): parsed, its fields that matter checked against the CLI and the
shipped broker files, and its two shell steps run here on the shipped files."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from helpers import REPO

from runtime.cli import build_parser
from runtime.manifest import load_manifest

DEPLOY = REPO / "deploy"
DOCS = list(yaml.safe_load_all((DEPLOY / "k8s" / "edge-run.yaml").read_text()))
SETS = {doc["metadata"]["name"]: doc for doc in DOCS if doc and doc["kind"] == "DaemonSet"}


def container(daemonset: str, name: str) -> dict:
    return next(c for c in SETS[daemonset]["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def host_paths(daemonset: str, name: str) -> dict[str, str]:
    """Mount path -> host path of a container's hostPath volumes."""
    volumes = {v["name"]: v for v in SETS[daemonset]["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"] for m in container(daemonset, name)["volumeMounts"]
            if "hostPath" in volumes[m["name"]]}


def edge_run_options():
    """What edge-run gets in the pod: the image's entrypoint (Dockerfile.jetson) and the container's args."""
    text = (REPO / "Dockerfile.jetson").read_text().replace("\\\n", " ")
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])", text, re.M).group(1))
    assert entrypoint[0] == "edge-run"
    return build_parser().parse_args(entrypoint[1:] + container("edge-run", "edge-run")["args"])


def test_edge_run_runs_with_the_nvidia_runtime_watching_host_engines_and_checkpointing_to_the_host():
    spec = SETS["edge-run"]["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    options = edge_run_options()  # every flag parses as edge-run parses it
    assert options.watch_engines
    mounts = host_paths("edge-run", "edge-run")
    assert mounts[options.engines] == options.engines and mounts[options.state_dir] == options.state_dir
    assert host_paths("edge-run-engines", "engines")["/host/engines"] == options.engines
    # a graceful stop (flush, checkpoint) fits in the grace period before the SIGKILL
    assert spec["terminationGracePeriodSeconds"] > options.stop_timeout


def test_health_comes_from_healthz_on_the_metrics_port():
    options = edge_run_options()
    edge = container("edge-run", "edge-run")
    port = next(p["containerPort"] for p in edge["ports"] if p["name"] == "metrics")
    assert port == options.metrics_port and options.metrics_host == "0.0.0.0"  # the kubelet probes the pod's address
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert edge[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # the startup probe leaves room for a TensorRT plan rebuild on first start (the unit's TimeoutStartSec is 15 min)
    assert edge["startupProbe"]["periodSeconds"] * edge["startupProbe"]["failureThreshold"] >= 15 * 60


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_box_broker_config_is_the_shipped_one_bridged_under_the_topic_edge_run_publishes_to(tmp_path):
    # given the init container's command, run on the shipped files for a node named jetson-7
    init = SETS["edge-run"]["spec"]["template"]["spec"]["initContainers"][0]
    (tmp_path / "config").mkdir()
    (tmp_path / "rendered").mkdir()
    for name in ("mosquitto.conf", "mosquitto-bridge.conf"):
        shutil.copy(DEPLOY / name, tmp_path / "config" / name)
    script = init["command"][2].replace("/config/", f"{tmp_path}/config/").replace("/rendered/", f"{tmp_path}/rendered/")
    subprocess.run(["sh", "-c", script], env={"NODE_NAME": "jetson-7", "PATH": "/usr/bin:/bin"}, check=True)
    rendered = (tmp_path / "rendered" / "mosquitto.conf").read_text()
    # then the broker runs the shipped settings and bridge, with the node as the box id
    assert rendered.startswith((DEPLOY / "mosquitto.conf").read_text())
    assert "topic edge-run/jetson-7/# out 1" in rendered.splitlines() and "BOX_ID" not in rendered
    # and edge-run publishes to that broker under the same box id
    options = edge_run_options()
    assert options.mqtt == "mqtt://127.0.0.1:1883" and "listener 1883" in rendered.splitlines()
    assert options.mqtt_prefix == "edge-run/$(NODE_NAME)"
    assert {m["mountPath"] for m in container("edge-run", "broker")["volumeMounts"]} >= {"/mosquitto/config", "/mosquitto/data"}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_engines_rollout_writes_a_loadable_folder_with_the_manifest_last(engines_dir, tmp_path):
    # given the engines container's script, with the image's /engines and the host folder here
    script = container("edge-run-engines", "engines")["command"][2]
    assert script.index("mv -f \"$incoming\"/manifest.json") > script.index("for f in")
    host = tmp_path / "host"
    host.mkdir()
    (host / "manifest.json").write_text("{}")  # an older model's manifest in place
    local = script.replace("/host/engines", str(host)).replace("/engines/.", f"{engines_dir}/.").replace("exec sleep infinity", "true")
    subprocess.run(["sh", "-c", local], check=True)
    # then the host folder holds the new engines, every file's hash matching, and nothing staged is left
    assert load_manifest(host).model_id() == load_manifest(engines_dir).model_id()
    assert not (host / ".incoming").exists()
