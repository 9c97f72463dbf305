"""Tier 3: conformance of the TCP transport, driven from C.

Compiles tests/c/test_tcp_transport.c with the transport (csrc/transport/tcp/tcp.c) and
the engine's shared status/conn code, then runs it. The C program forks two processes
joined by a real loopback TCP connection and checks message sizes 0..64 MiB in both
directions, reduce-while-receiving with the stream split mid-element, queued receives,
size/fingerprint mismatches, a corrupted stream, and peers that exit or are SIGKILLed
mid-transfer. It prints one line per scenario and the 64 MiB loopback throughput.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "tests/c/test_tcp_transport.c",
    "csrc/transport/tcp/tcp.c",
    "csrc/engine/status.c",
    "csrc/engine/conn.c",
]


def test_tcp_transport_conformance(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found on PATH: the TCP transport's C conformance test must be compiled")
    exe = tmp_path / "test_tcp_transport"
    cmd = [gcc, "-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE", "-Icsrc/include", *SOURCES, "-o", str(exe)]
    build = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, f"compiling failed:\n{' '.join(cmd)}\n{build.stderr}"
    ours = [ln for ln in build.stderr.splitlines() if "warning" in ln and ("tcp" in ln)]
    assert not ours, "the TCP transport or its test compiles with warnings:\n" + build.stderr

    run = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=110)
    print(run.stdout)  # scenario lines and the throughput figure, shown with pytest -s
    assert run.returncode == 0, (
        f"TCP transport conformance failed (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    )
