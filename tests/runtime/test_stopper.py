"""edge-run's shutdown bound (`runtime.cli._Stopper`) in a real process with real signals.

The service it stops is a labelled double that never finishes (what a stuck engine call or a
sink blocked in the kernel looks like from the stopper's side): the stopper must still end the
process with exit 1 once the stop timeout has passed, or at once on a second signal, instead of
hanging until systemd's SIGKILL.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from helpers import REPO

from runtime.errors import EXIT_FAILED

STUCK_SERVICE = textwrap.dedent("""
    import logging, sys, time
    from runtime.cli import _Stopper

    class StuckService:  # test double: stop() is called, the run never returns
        def stop(self):
            print("stop requested", flush=True)

    logging.basicConfig(level="INFO", stream=sys.stderr)
    stopper = _Stopper(float(sys.argv[1]))
    stopper.install()
    stopper.target = StuckService()
    print("ready", flush=True)
    time.sleep(60)
    sys.exit(0)  # never reached when the stopper works
""")


def _start(timeout: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", STUCK_SERVICE, str(timeout)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_shutdown_that_overruns_the_stop_timeout_exits_1_after_the_timeout():
    process = _start(timeout=1.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    took = time.monotonic() - sent
    stdout, stderr = process.communicate()
    print(f"stuck shutdown: exit {code} after {took:.2f} s (stop timeout 1.5 s)")
    assert code == EXIT_FAILED
    assert "stop requested" in stdout  # the service was asked first
    assert "shutdown took longer than 2 s" in stderr  # "%.0f" of 1.5
    # Not before the timeout: the service gets the whole bound to finish.
    assert took >= 1.5


def test_a_second_signal_exits_1_at_once():
    process = _start(timeout=30.0)
    process.send_signal(signal.SIGINT)
    assert process.stdout.readline().strip() == "stop requested"
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=10)  # far below the 30 s stop timeout: the second signal ended it
    _, stderr = process.communicate()
    assert code == EXIT_FAILED
    assert "second signal 15: exiting now" in stderr
