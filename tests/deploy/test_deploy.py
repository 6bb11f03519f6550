"""Deployment files, checked for structure: CI has no systemd to boot, no Docker engine, no Jetson."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

from runtime.cli import build_parser

DEPLOY = REPO / "deploy"
SECRET = re.compile(r"(passw(or)?d|secret|token|api[_-]?key)\s*[=:]\s*\S", re.IGNORECASE)


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit file -> {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_unit_is_a_notify_service_with_watchdog_restart_limit_state_and_hardening():
    unit = unit_settings(DEPLOY / "edge-run.service")
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert re.fullmatch(r"\d+s?", one["WatchdogSec"]) and one["Restart"] == "on-failure"
    assert "StartLimitBurst" in unit["Unit"] and "StartLimitIntervalSec" in unit["Unit"]
    assert one["EnvironmentFile"] == "/etc/edge-run/edge-run.env" and one["StateDirectory"] == "edge-run"
    assert one["User"] not in ("root", "0") and "video" in one["SupplementaryGroups"].split()
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict" and one["DevicePolicy"] == "closed"
    assert any("video4linux" in value or "/dev/video" in value for value in service["DeviceAllow"])
    assert one["CapabilityBoundingSet"] == "" and "3" in one["RestartPreventExitStatus"].split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_runs_options_that_edge_run_accepts():
    service = unit_settings(DEPLOY / "edge-run.service")["Service"]
    defaults = dict(value.split("=", 1) for value in service["Environment"])
    variables = {**defaults, **env_file(DEPLOY / "edge-run.env")}
    command = service["ExecStart"][-1]
    # systemd: ${VAR} is one word, $VAR splits at whitespace
    command = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(variables[m.group(1)]), command)
    command = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], command)
    argv = shlex.split(command)
    assert argv[0].endswith("/edge-run")
    args = build_parser().parse_args(argv[1:])
    assert args.quiet and args.source == ["csi://0"] and args.metrics_port == 9108 and args.metrics_host == "127.0.0.1"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_knows_every_directive(tmp_path):
    unit = tmp_path / "edge-run.service"
    unit.write_text((DEPLOY / "edge-run.service").read_text())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "Unknown" in line or "Invalid" in line or "Failed to parse" in line]
    assert not problems, done.stderr


def test_the_environment_file_documents_every_setting_and_holds_no_secret():
    text = (DEPLOY / "edge-run.env").read_text()
    for name in ("EDGE_RUN_SOURCE", "EDGE_RUN_ENGINES", "EDGE_RUN_OPTIONS", "EDGE_RUN_MQTT_USERNAME", "EDGE_RUN_MQTT_PASSWORD",
                 "EDGE_RUN_MQTT_CA_FILE", "EDGE_RUN_MQTT_CERT_FILE", "EDGE_RUN_MQTT_KEY_FILE"):
        assert name in text
    assert "0600" in text
    assert not [k for k, v in env_file(DEPLOY / "edge-run.env").items() if "PASSWORD" in k and v]


def test_the_dockerfile_pins_its_base_runs_unprivileged_and_keeps_the_jetpack_opencv():
    steps = dockerfile_instructions(REPO / "Dockerfile.jetson")
    (base,) = [rest for word, rest in steps if word == "FROM"]
    image, _, tag = base.partition(":")
    assert image == "nvcr.io/nvidia/l4t-jetpack" and re.fullmatch(r"r36\.\d+\.\d+", tag)  # JetPack 6, a fixed tag
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    entrypoint = json.loads([rest for word, rest in steps if word == "ENTRYPOINT"][-1])
    assert entrypoint[0] == "edge-run"
    build_parser().parse_args(entrypoint[1:] + json.loads([rest for word, rest in steps if word == "CMD"][-1]))
    runs = " && ".join(rest for word, rest in steps if word == "RUN")
    assert "pip install --no-deps ." in runs  # the project's own opencv-python-headless requirement is not followed
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert not any(re.search(r"opencv|tensorrt", part, re.IGNORECASE) for part in installs)
    assert "GStreamer" in runs  # and the build checks the OpenCV it ends up with


def test_the_container_files_hold_no_secrets():
    for path in (REPO / "Dockerfile.jetson", DEPLOY / "docker-compose.yml", DEPLOY / "mosquitto.conf", DEPLOY / "edge-run.service"):
        for word, rest in dockerfile_instructions(path) if path.name.startswith("Dockerfile") else [("", path.read_text())]:
            if word in ("ENV", "ARG", ""):
                assert not SECRET.search(re.sub(r"(?m)^\s*#.*$", "", rest)), path


def test_compose_runs_edge_run_beside_a_pinned_mosquitto():
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "dockerfile: Dockerfile.jetson" in text and "runtime: nvidia" in text
    assert re.search(r"image: eclipse-mosquitto:\d+\.\d+\.\d+", text)
    assert "mqtt://mosquitto:1883" in text and "/tmp/argus_socket:/tmp/argus_socket" in text
    assert "127.0.0.1:9108:9108" in text and "127.0.0.1:1883:1883" in text  # published on the host's loopback only
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf" in text and (DEPLOY / "mosquitto.conf").is_file()


def test_the_readme_snippet_shows_the_install_and_docker_run_lines():
    text = (DEPLOY / "README.md").read_text()
    assert "systemctl enable --now edge-run" in text
    assert "docker run" in text and "--runtime nvidia" in text and "/tmp/argus_socket" in text and "--device /dev/video0" in text
    for name in ("edge_frames_total", "edge_stage_latency_seconds", "edge_engine_info", "/healthz"):
        assert name in text


def test_ci_installs_the_broker_the_mqtt_tests_need():
    assert "mosquitto" in (REPO / ".ci" / "run").read_text()
