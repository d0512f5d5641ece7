"""libnftables in this process: Debian's ``python3-nftables`` (a ctypes binding of libnftables.so.1),
found in the interpreter's own path or, from a virtualenv (the service's /opt/multinic, the plugin
image's), in the distribution's. One context per process (a forked worker makes its own), commands as
nft text: a buffer of commands is one nf_tables transaction, and nothing is spawned."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys
import threading
from typing import Any

from ...errors import Failure

# Where distributions install the binding (python3-nftables on Debian/Ubuntu; python3-nftables on
# Fedora/RHEL under the versioned site-packages).
SYSTEM_PATHS = ("/usr/lib/python3/dist-packages/nftables", "/usr/lib/python3*/site-packages/nftables",
                "/usr/lib64/python3*/site-packages/nftables")
INSTALL_HINT = "install python3-nftables (Debian/Ubuntu: apt-get install python3-nftables)"

_module: Any = None
_lock = threading.Lock()
_context: tuple[int, Any] | None = None


class NftError(Failure):
    """libnftables refused a command (the whole transaction was refused with it)."""


def _load_module() -> Any:
    """The ``nftables`` module: importable as is, else the distribution's copy (it is pure Python; the
    library it loads is the system's)."""
    global _module
    if _module is not None:
        return _module
    try:
        import nftables  # type: ignore[import-not-found]
    except ImportError:
        found = [p for pattern in SYSTEM_PATHS for p in sorted(glob.glob(pattern))
                 if os.path.isfile(os.path.join(p, "__init__.py"))]
        if not found:
            raise Failure(f"the nftables firewall backend needs libnftables' Python binding: {INSTALL_HINT}") from None
        spec = importlib.util.spec_from_file_location("nftables", os.path.join(found[0], "__init__.py"),
                                                      submodule_search_locations=[found[0]])
        assert spec is not None and spec.loader is not None
        nftables = importlib.util.module_from_spec(spec)
        sys.modules["nftables"] = nftables
        try:
            spec.loader.exec_module(nftables)
        except Exception:
            sys.modules.pop("nftables", None)
            raise
    _module = nftables
    return nftables


def available() -> str | None:
    """None when libnftables can be used here, else why not."""
    try:
        _ctx()
    except Failure as exc:
        return str(exc)
    return None


def _ctx() -> Any:
    """This process's libnftables context (its netlink socket is this process's and this namespace's)."""
    global _context
    pid = os.getpid()
    if _context is None or _context[0] != pid:
        module = _load_module()
        try:
            ctx = module.Nftables()
        except OSError as exc:
            raise Failure(f"libnftables.so.1 cannot be loaded ({exc}): {INSTALL_HINT}") from exc
        ctx.set_stateless_output(True)  # no counter values in listings: they compare as text
        _context = (pid, ctx)
    return _context[1]


def _cmd(commands: str, as_json: bool = False) -> tuple[int, str, str]:
    with _lock:
        ctx = _ctx()
        ctx.set_json_output(as_json)
        try:
            return ctx.cmd(commands)
        finally:
            ctx.set_json_output(False)


def run(commands: str) -> None:
    """One buffer of nft commands, as one transaction; NftError with libnftables' message if refused."""
    rc, _out, err = _cmd(commands)
    if rc != 0:
        raise NftError(f"nftables refused the change: {' '.join(err.split()) or f'error {rc}'}")


def _listed(command: str, as_json: bool) -> str | None:
    """A listing's output; None for an object that does not exist."""
    rc, out, err = _cmd(command, as_json)
    if rc != 0:
        if "No such file or directory" in err:
            return None
        raise NftError(f"nftables listing failed ({command}): {' '.join(err.split())}")
    return out


def listing(command: str) -> list[dict[str, Any]]:
    """``list ...`` as libnftables' JSON objects (the ``nftables`` array without its metainfo); [] for an
    object that does not exist."""
    out = _listed(command, True)
    return [item for item in json.loads(out or '{"nftables": []}')["nftables"] if "metainfo" not in item]


def text(command: str) -> str:
    """``list ...`` as nft prints it (stateless); empty for an object that does not exist."""
    return _listed(command, False) or ""


def tables() -> set[tuple[str, str]]:
    """(family, name) of every table of this namespace."""
    return {(t["table"]["family"], t["table"]["name"]) for t in listing("list tables") if "table" in t}


def chains() -> list[dict[str, Any]]:
    """Every chain of this namespace (family, table, name, and for base chains hook, prio, policy)."""
    return [c["chain"] for c in listing("list chains") if "chain" in c]
