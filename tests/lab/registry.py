"""A plugin registry for the lab: Debian's ``docker-registry`` (distribution 2.8) as a plain process in a
lab namespace, with filesystem storage outside any lab's work directory (a lab kills whatever names its
directory when it stops dockerd, and the registry must outlive a dockerd restart), and the managed
plugin built by scripts/build-managed-plugin.sh pushed to it as one or more releases."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from .dockerd import tail
from .topology import LabError, lab_tool


class Registry:
    """``Registry(nsenter, root, addr)``: ``start()`` serves ``addr`` (``127.0.0.1:5000`` is trusted by
    dockerd without TLS; another address needs ``--insecure-registry``) from ``root``; ``stop()``."""

    def __init__(self, nsenter: list[str], root: Path, addr: str = "127.0.0.1:5000") -> None:
        self.nsenter = nsenter
        self.root = root
        self.addr = addr
        self.log = root / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[str], bool], timeout: float = 20) -> None:
        """Start it and wait until ``ready(url of /v2/)`` (an HTTP GET from where clients are)."""
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.addr}'}}\n"
        )
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([*self.nsenter, lab_tool("docker-registry"), "serve", str(config)],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready(f"http://{self.addr}/v2/"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(f"registry on {self.addr} did not answer:\n{tail(self.log)}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def publish_plugin(lab: Any, plugin_dir: Path, refs: list[str]) -> None:
    """``docker plugin create`` + ``push`` + ``rm`` of each ref from ``lab``'s dockerd; each release's
    description ends in ``[release <tag>]`` (two releases must differ, or an upgrade changes nothing)."""
    for ref in refs:
        release = ref.rsplit(":", 1)[1]
        config = json.loads((plugin_dir / "config.json").read_text())
        config["description"] = f"{config['description'].split(' [')[0]} [release {release}]"
        (plugin_dir / "config.json").write_text(json.dumps(config, indent=2))
        lab.docker("plugin", "create", ref, str(plugin_dir), timeout=600)
        lab.docker("plugin", "push", ref, timeout=600)
        lab.docker("plugin", "rm", ref)


def remove_all_plugins(lab: Any) -> None:
    for ref in lab.docker("plugin", "ls", "-q", check=False).stdout.split():
        lab.docker("plugin", "disable", "-f", ref, check=False)
        lab.docker("plugin", "rm", "-f", ref, check=False)
