"""The README's two commands on a host that already runs Docker CE: what would they do to it?

The host's package and service tools are stubbed (each logs how it was called, and answers as a Docker CE
host would: docker-ce, docker-ce-cli and containerd.io installed, docker.service active), and the real
scripts run from a copy of this checkout whose .venv is stubbed too. Whatever the scripts call is in the
log: they must never stop, restart, install, replace or remove the host's Docker, containerd or runc, never
touch a service, and refuse (changing nothing) when apt would remove a package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST_DOCKER = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin")
# What the lab-tools script checks after unpacking, created by the dpkg-deb stub.
UNPACKED = ("usr/sbin/dockerd", "usr/bin/docker", "usr/libexec/docker/cli-plugins/docker-compose", "usr/sbin/runc",
            "usr/bin/docker-registry", "usr/sbin/radvd", "usr/bin/iperf3", "usr/bin/tini-static")

STUB = """#!/bin/sh
printf '%s\\n' "$(basename "$0") $*" >> "$CALLS"
"""
STUBS = {
    # Every tool that could change the host's packages or services logs and does nothing else...
    "systemctl": STUB + 'case "$1" in is-active|is-enabled) exit 0;; esac\n',
    "service": STUB, "invoke-rc.d": STUB, "update-rc.d": STUB, "deb-systemd-invoke": STUB,
    "update-alternatives": STUB, "dpkg": STUB, "dockerd": STUB, "containerd": STUB, "docker": STUB, "runc": STUB,
    "id": "#!/bin/sh\necho 0\n",
    # ...and answers as on a Docker CE host.
    "dpkg-query": STUB + 'for p in ' + " ".join(HOST_DOCKER) + ' $INSTALLED; do\n'
                  '  [ "$p" = "${4:-$3}" ] && { printf "install ok installed"; exit 0; }\ndone\nexit 1\n',
    "apt-get": STUB + """
case " $* " in
  *" -s "*) printf '%s\\n' "$APT_PLAN"; exit 0;;
  *" download "*) for p in "$@"; do case "$p" in *=*) : > "${p%%=*}.deb";; esac; done;;
esac
exit 0
""",
    "dpkg-deb": STUB + 'if [ "$1" = -x ]; then for f in ' + " ".join(UNPACKED) + '; do\n'
                '  mkdir -p "$3/$(dirname $f)"; printf "#!/bin/sh\\necho fake\\n" > "$3/$f"; chmod +x "$3/$f"\n'
                'done; fi\n',
}
VENV = {name: STUB for name in ("python", "pip", "ruff")}
# Calls that change the host's Docker or services, whatever the arguments look like.
FORBIDDEN = (
    re.compile(r"^systemctl (?!is-active|is-enabled|--version)"),
    re.compile(r"^(service|invoke-rc\.d|update-rc\.d|deb-systemd-invoke|update-alternatives) "),
    re.compile(r"^(dockerd|containerd|docker|runc)\b"),
    re.compile(r"^dpkg (-i|--install|-r|--remove|-P|--purge|--unpack|--configure)"),
    re.compile(r"^apt-get .*\b(remove|purge|autoremove|dist-upgrade|upgrade|full-upgrade)\b"),
    re.compile(r"^apt-get (?!.* -s ).*\binstall\b.*\b(docker[\w.-]*|containerd[\w.-]*|runc|moby[\w.-]*)\b"),
)


def fake_host(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", repo / "scripts")
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    stubs = tmp_path / "bin"
    for directory, tools in ((stubs, STUBS), (repo / ".venv" / "bin", VENV)):
        directory.mkdir(parents=True)
        for name, text in tools.items():
            (directory / name).write_text(text)
            (directory / name).chmod(0o755)
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm\n\n"
                       "Types: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\n")
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls.log"), "CI": "true",
        "MULTINIC_LAB_TOOLS": str(tmp_path / "opt-multinic-lab"), "MULTINIC_APT_SOURCES": str(sources),
        "INSTALLED": "iptables iproute2 conntrack python3-venv", "HOME": str(tmp_path),
        "APT_PLAN": "Inst nftables (1.0.6-2+deb12u2 Debian:12/stable [amd64])",
    }
    return repo, env


def run(repo: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(repo / "scripts" / script)], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL)


def calls(env: dict[str, str]) -> list[str]:
    path = Path(env["CALLS"])
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("script", ["demo.sh", "test.sh"])
def test_the_readme_commands_leave_the_hosts_docker_alone(tmp_path: Path, script: str) -> None:
    repo, env = fake_host(tmp_path)
    proc = run(repo, env, script)
    assert proc.returncode == 0, proc.stderr
    log = calls(env)
    bad = [line for line in log if any(p.search(line) for p in FORBIDDEN)]
    assert not bad, f"{script} would have done this to the host's Docker or services:\n" + "\n".join(bad)
    installs = [line for line in log if re.match(r"apt-get (?!.* -s ).*\binstall\b", line)]
    assert installs and all("docker" not in line and "containerd" not in line for line in installs), installs
    # The lab's engines were fetched with a private apt configuration and unpacked under the lab prefix.
    downloads = [line for line in log if " download " in f" {line} "]
    assert any("docker.io=20.10" in line for line in downloads) and any("docker.io=28.5" in line for line in downloads)
    assert all("Dir::State::Lists=" in line for line in downloads), downloads
    prefix = Path(env["MULTINIC_LAB_TOOLS"])
    assert (prefix / "engine-20.10/root/usr/sbin/dockerd").exists()
    # It ends by running the demo or the test suite (stubbed here) from the checkout's .venv.
    last = {"demo.sh": "python scripts/demo.py", "test.sh": "python -m pytest"}[script]
    assert any(line.startswith(last) for line in log), log[-5:]


def test_bootstrap_refuses_when_apt_would_remove_a_package(tmp_path: Path) -> None:
    """Debian's packages conflict with Docker CE's (docker.io declares Conflicts: docker-ce): if apt's plan
    removes anything, bootstrap says why and stops before changing anything."""
    repo, env = fake_host(tmp_path)
    env["APT_PLAN"] = "Remv docker-ce [5:28.5.2-1~debian.12~bookworm]\nInst nftables (1.0.6-2+deb12u2 Debian:12/stable)"
    proc = run(repo, env, "bootstrap.sh")
    assert proc.returncode == 3
    assert "refusing" in proc.stderr and "Remv docker-ce" in proc.stderr, proc.stderr
    assert "never install, replace or remove Docker" in proc.stderr
    log = calls(env)
    assert not [line for line in log if re.match(r"apt-get (?!.* -s ).*\binstall\b", line)], log
    assert not [line for line in log if " download " in f" {line} "], log
