"""What ``multinic serve`` imports stays small (docs/ARCHITECTURE.md, *Processes*): no web framework, no
docker SDK, no asyncio (pyroute2's ``IPRoute`` runs on it: the plugin's rtnetlink is its own), and
pyroute2 without its package ``__init__``, while pyroute2's other names still work."""

import subprocess
import sys

HEAVY = ("flask", "werkzeug", "jinja2", "docker", "requests", "urllib3", "iptc", "prometheus_client",
         "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.netlink.generic.wireguard", "pyroute2.iproute", "asyncio",
         "unittest")
SERVE = "import plugin.ops.cli, plugin.api.http, plugin.loops.gateways, plugin.loops.healer, plugin.ops.status"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_serve_imports_nothing_heavy():
    loaded = _run(f"{SERVE}\nimport sys\nprint(' '.join(sys.modules))").split()
    heavy = [m for m in loaded if m.startswith(HEAVY)]
    assert heavy == [], heavy


def test_pyroute2_names_resolve_as_before():
    out = _run(f"{SERVE}\nimport pyroute2\nfrom pyroute2 import IPRoute, NetNS, NetlinkError\n"
               "from pyroute2.iproute.linux import IPRoute as R\nprint(IPRoute is R, NetlinkError.__name__)\n"
               "from pyroute2 import IPSet\nprint(IPSet.__name__, 'pyroute2.ndb.main' in __import__('sys').modules)")
    assert out.split() == ["True", "NetlinkError", "IPSet", "True"]
