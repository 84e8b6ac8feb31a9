"""The systemd unit passes systemd-analyze verify and security, and the installer's dry run lists every step."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "dicom-node.service"
INSTALL = REPO / "scripts" / "install.sh"
MAX_EXPOSURE = 2.5


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd"
    return tool


def unit_search_dir() -> Path:
    """The directory holding the distribution's units (sysinit.target and friends), from systemd itself."""
    out = subprocess.run([systemd_analyze(), "unit-paths"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        candidate = Path(line.strip())
        if (candidate / "sysinit.target").is_file():
            return candidate
    raise AssertionError(f"no unit directory with sysinit.target among:\n{out}")


def verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A root with the install layout, so verify can check the ExecStart/ExecReload binaries exist."""
    root = tmp_path / "root"
    units = unit_search_dir()
    shutil.copytree(units, root / units.relative_to("/"), symlinks=True)
    python = root / "opt/dicom-node/.venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    (root / "opt/dicom-node/daemon.py").write_text("")
    kill = root / "bin/kill"
    kill.parent.mkdir(parents=True)
    kill.write_text("#!/bin/sh\n")
    kill.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/dicom-node.service").write_text(unit_text)
    return root


def verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    root = verify_root(tmp_path, unit_text)
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", "dicom-node.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def exposure(tmp_path: Path, unit_text: str) -> float:
    path = tmp_path / "dicom-node.service"
    path.write_text(unit_text)
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for dicom-node\.service: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, f"no exposure score in systemd-analyze security output:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def port_104_variant(unit_text: str) -> str:
    """The unit with the commented CAP_NET_BIND_SERVICE alternative swapped in, as an operator would."""
    text = unit_text
    for old, new in (
        ("\nCapabilityBoundingSet=\n", "\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"),
        ("\nAmbientCapabilities=\n", "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"),
        ("\nPrivateUsers=yes\n", "\nPrivateUsers=no\n"),
    ):
        assert old in text, old
        assert f"#   {new.strip()}\n" in text, f"the port 104 variant should be documented as '{new.strip()}'"
        text = text.replace(old, new)
    return text


def directives(unit_text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit_text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_passes_systemd_analyze_verify_without_any_warning(tmp_path: Path) -> None:
    proc = verify(tmp_path, UNIT.read_text())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""


def test_verify_as_run_here_does_report_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("WatchdogSec=60", "WatchdogSec=soon\nProtectSystem2=strict")
    proc = verify(tmp_path, broken)
    assert "Failed to parse sec value" in proc.stderr
    assert "Unknown key 'ProtectSystem2'" in proc.stderr


def test_security_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    score = exposure(tmp_path, UNIT.read_text())
    assert score <= MAX_EXPOSURE


def test_security_exposure_of_the_port_104_variant_is_at_most_2_5(tmp_path: Path) -> None:
    score = exposure(tmp_path, port_104_variant(UNIT.read_text()))
    assert score <= MAX_EXPOSURE


def test_unit_has_what_the_service_needs() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["Restart"] == ["on-failure"]
    assert d["User"] == ["dicom-node"]
    assert d["ExecStart"] == ["/opt/dicom-node/.venv/bin/python /opt/dicom-node/daemon.py --config /etc/dicom-node/node.yaml run"]
    assert d["ExecStartPre"] == [d["ExecStart"][0].removesuffix(" run") + " check-config"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["WorkingDirectory"] == ["/var/lib/dicom-node"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == ["/var/lib/dicom-node/inbox /var/lib/dicom-node/outbox /var/lib/dicom-node/var"]
    for flag in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert d[flag] == ["yes"], flag
    assert d["CapabilityBoundingSet"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["MemoryMax"]


def test_every_directive_of_the_service_section_sits_under_a_comment_saying_why() -> None:
    section = UNIT.read_text().split("[Service]", 1)[1].split("[Install]", 1)[0]
    explained = False
    uncommented = []
    for line in section.splitlines():
        if not line.strip():
            explained = False
        elif line.startswith("#"):
            explained = True
        elif not explained:
            uncommented.append(line)
    assert uncommented == []


def test_install_script_dry_run_lists_every_step_and_changes_nothing(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is missing"
    src = tmp_path / "src"
    for rel in ("scripts/install.sh", "systemd/dicom-node.service", "requirements.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    (src / "daemon.py").write_text("")
    (src / "etc").mkdir()
    (src / "etc/node.yaml").write_text("")
    proc = subprocess.run(
        [bash, str(src / "scripts/install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in (
        "install -d -o dicom-node -g dicom-node -m 2770 /var/lib/dicom-node/inbox",
        "install -d -o dicom-node -g dicom-node -m 2750 /var/lib/dicom-node/outbox",
        "install -d -o dicom-node -g dicom-node -m 0750 /var/lib/dicom-node/var",
        "-m venv /opt/dicom-node/.venv" if "exists: updating" not in out else "exists: updating its packages",
        "-m pip install --disable-pip-version-check --no-input --quiet -r /opt/dicom-node/requirements.txt",
        "runuser -u dicom-node -- /opt/dicom-node/.venv/bin/python /opt/dicom-node/daemon.py"
        " --config /etc/dicom-node/node.yaml check-config",
        f"install -o root -g root -m 0644 {src}/systemd/dicom-node.service /etc/systemd/system/dicom-node.service",
    ):
        assert expected in out, expected
    assert "useradd --system" in out or "==> service user dicom-node\n    exists" in out
    assert "enable --now dicom-node" in out


def test_install_script_refuses_to_run_unprivileged_for_real_or_with_unknown_options(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is missing"
    proc = subprocess.run([bash, str(INSTALL), "--frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown argument: --frobnicate" in proc.stderr
