"""pyroute2 without its package ``__init__``, which imports every netlink family pyroute2 has (NDB, IPDB,
WireGuard, nl80211, IPVS, plan9...) into every process of the plugin, for the one name it uses
(``NetlinkError``; its rtnetlink is :mod:`.netlink`).

:func:`defer_init` registers the package with its ``__init__`` not yet run: ``from pyroute2 import
IPRoute`` (``NetNS``, ``NetlinkError``) resolves from the module defining it, a submodule imports as
usual, and any other name runs the real ``__init__`` first, so nothing else changes."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

DIRECT = {"IPRoute": "pyroute2.iproute.linux", "NetNS": "pyroute2.iproute.linux",
          "NetlinkError": "pyroute2.netlink.exceptions"}


def defer_init() -> None:
    """Before the first import of pyroute2 (``plugin/__init__.py``); a no-op if it is imported."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)

    def resolve(name: str) -> Any:
        if name in DIRECT:
            value = getattr(importlib.import_module(DIRECT[name]), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"pyroute2.{name}") is not None:
            value = importlib.import_module(f"pyroute2.{name}")
        else:  # another name: the real package, then
            del package.__getattr__
            spec.loader.exec_module(package)
            try:
                return package.__dict__[name]
            except KeyError:
                raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None
        setattr(package, name, value)
        return value

    package.__getattr__ = resolve
    sys.modules["pyroute2"] = package
