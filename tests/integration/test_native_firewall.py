"""The native nftables backend against the real kernel, in scratch network namespaces only: the whole table in
one transaction (every rule shape of both families), edits that are one element per port with thousands held,
atomic refusals, Docker's iptables FORWARD DROP opened and closed, and another backend's leftovers removed.
Packets crossing it are tests/integration/test_datapath.py's (run once per backend)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from plugin.kernel.firewall.model import Edit, Ruleset
from plugin.plan.desired import change, host_state
from tests.integration.conftest import DOCKERS_IPTABLES, settings, xtables_lock
from tests.nsutil import in_netns, scratch_netns, sh
from tests.unit.test_firewall_golden import FACTS, MANY, ONE
from tests.unit.test_native_rules import FACTS6, _dual_stack, ports_held

NS = f"nfnat{os.getpid() % 10000}"


@pytest.fixture
def ns():
    with scratch_netns(NS) as name:
        yield name


def _apply_twice_and_remove(ruleset: Ruleset, ruleset6: Ruleset) -> dict:
    from plugin.kernel.firewall import nft
    from plugin.kernel.firewall.native import NativeBackend

    v4, v6 = NativeBackend(4, xtables_lock()), NativeBackend(6, xtables_lock())
    out = {}
    v4.apply(ruleset)
    v6.apply(ruleset6)
    out["drift"] = v4.drift(ruleset) + v6.drift(ruleset6)
    first = nft.text("list ruleset")
    v4.apply(ruleset)
    v6.apply(ruleset6)
    out["idempotent"] = nft.text("list ruleset") == first
    out["published"] = sorted((p.proto, p.host_ip, p.host_port) for p in v4.published() + v6.published())
    out["dump"] = v4.dump()
    v4.remove()
    v6.remove()
    out["after"] = nft.text("list ruleset")
    return out


def test_the_whole_table_of_both_families_in_one_transaction(ns):
    hs = host_state(_dual_stack(), FACTS6)
    out = in_netns(ns, _apply_twice_and_remove, hs.firewall, hs.firewall6)
    assert out["drift"] == [] and out["idempotent"]
    assert ("tcp", "2001:db8:101::2", 10000) in out["published"]
    assert ("tcp", "192.168.101.2", 10000) in out["published"]
    assert any("map published" in line for line in out["dump"]["ip multinic"])
    assert out["after"].strip() == ""  # nothing of ours left, and nothing else made


def _edits_with_ports_held(held: int) -> dict:
    """A host holding ``held`` published ports: a Join and a Leave through the backend's edit, counted in the
    kernel's map; then an edit deleting an element that is not there (refused: nothing of it applied)."""
    from plugin.errors import Failure
    from plugin.kernel.firewall import nft
    from plugin.kernel.firewall.native import NativeBackend, Table

    before, after, _new = ports_held(held)
    backend = NativeBackend(4, xtables_lock())
    backend.apply(host_state(before, FACTS).firewall)

    def count() -> int:
        return len((Table.parse(nft.listing("list map ip multinic published")).maps or {}).get("published", {}))

    out = {"start": count()}
    backend.edit(change(host_state(before, FACTS), host_state(after, FACTS)).firewall, lambda: Ruleset())
    out["joined"] = count()
    leave = change(host_state(after, FACTS), host_state(before, FACTS)).firewall
    backend.edit(leave, lambda: Ruleset())
    out["left"] = count()
    join = change(host_state(before, FACTS), host_state(after, FACTS)).firewall
    try:
        backend.edit((*join, *leave, *leave), lambda: Ruleset())  # add, delete, delete again: refused whole
        out["refused"] = None
    except Failure as exc:
        out["refused"] = str(exc)
    out["after_refusal"] = count()
    out["drift"] = backend.drift(host_state(before, FACTS).firewall)
    backend.remove()
    return out


@pytest.mark.parametrize("held", [0, 2000])
def test_a_port_is_one_element_whatever_the_host_holds_and_a_refused_edit_changes_nothing(ns, held):
    out = in_netns(ns, _edits_with_ports_held, held)
    assert (out["start"], out["joined"], out["left"]) == (held, held + 1, held)
    assert out["refused"] and "nftables refused" in out["refused"]
    assert out["after_refusal"] == held and out["drift"] == []


def _both_families_at_once() -> dict:
    """A dual-stack host; a verb's edits of both tables through ``Firewall.edit``: one transaction, so an
    IPv6 deletion the kernel cannot match leaves the IPv4 table unchanged too."""
    from plugin.errors import Failure
    from plugin.kernel.firewall import Firewall, nft
    from plugin.kernel.firewall.native import NativeBackend

    state = _dual_stack()
    fw = Firewall(NativeBackend(4, xtables_lock()), NativeBackend(6, xtables_lock()))
    hs = host_state(state, FACTS6)
    fw.v4.apply(hs.firewall)
    fw.v6.apply(hs.firewall6)
    before = nft.text("list ruleset")
    gone = dataclasses.replace(state, endpoints=dict(list(state.endpoints.items())[1:]))
    leave = change(hs, host_state(gone, FACTS6))
    runs: list[str] = []
    real = nft.run
    nft.run = lambda commands: runs.append(commands) or real(commands)
    out: dict = {}
    try:
        fw.edit(leave.firewall, lambda: Ruleset(), leave.firewall6 * 2, lambda: Ruleset())  # IPv6 deleted twice
    except Failure as exc:
        out["refused"] = str(exc)
    out["unchanged"] = nft.text("list ruleset") == before
    fw.edit(leave.firewall, lambda: Ruleset(), leave.firewall6, lambda: Ruleset())
    nft.run = real
    out["transactions"] = len(runs)
    out["drift"] = fw.v4.drift(host_state(gone, FACTS6).firewall) + fw.v6.drift(host_state(gone, FACTS6).firewall6)
    fw.v4.remove()
    fw.v6.remove()
    return out


def test_a_verbs_edits_of_both_families_are_one_transaction(ns):
    out = in_netns(ns, _both_families_at_once)
    assert out["refused"] and out["unchanged"]
    assert out["transactions"] == 2 and out["drift"] == []  # the refused one, then the good one


def _opening(first: Ruleset, more: Ruleset) -> dict:
    from plugin.kernel.firewall.native import NativeBackend

    backend = NativeBackend(4, xtables_lock())
    out = {}
    backend.apply(first)
    out["user"] = sh_here("iptables-nft -S DOCKER-USER")
    out["applied"] = sh_here("iptables-nft -S MULTINIC-FORWARD")
    backend.edit(change_of(first, more), lambda: more)
    out["edited"] = sh_here("iptables-nft -S MULTINIC-FORWARD")
    out["drift"] = backend.drift(more)
    backend.edit(change_of(more, first), lambda: first)
    out["back"] = sh_here("iptables-nft -S MULTINIC-FORWARD")
    backend.remove()
    out["removed"] = sh_here("iptables-nft -S")
    return out


def change_of(a: Ruleset, b: Ruleset) -> tuple[Edit, ...]:
    from plugin.kernel.firewall.model import diff

    return diff(a, b)


def sh_here(cmd: str) -> str:
    import subprocess

    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout


def test_dockers_iptables_forward_drop_is_opened_per_bridge_after_the_users_rules(ns):
    sh(ns, DOCKERS_IPTABLES + " && iptables -I DOCKER-USER -s 203.0.113.9 -j DROP")
    out = in_netns(ns, _opening, host_state(ONE, FACTS).firewall, host_state(MANY, FACTS).firewall)
    user = out["user"].splitlines()
    assert user[-3:] == ["-A DOCKER-USER -s 203.0.113.9/32 -j DROP",
                         "-A DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD",
                         "-A DOCKER-USER -j RETURN"]
    assert "-A MULTINIC-FORWARD -i mn-web -j ACCEPT" in out["applied"]
    assert "-A MULTINIC-FORWARD -o mn-routed -j ACCEPT" in out["edited"] and out["drift"] == []
    assert "mn-routed" not in out["back"] and "-o mn-web -j ACCEPT" in out["back"]
    assert "MULTINIC" not in out["removed"] and "-P FORWARD DROP" in out["removed"]


def _leftovers(selected: str) -> list[str]:
    from plugin.kernel.firewall import firewall_for, remove_leftovers

    return remove_leftovers(firewall_for(selected, settings()))


def test_another_backends_leftovers_are_removed_at_start(ns):
    from tests.integration.conftest import BACKEND

    assert BACKEND[0] == ""
    sh(ns, DOCKERS_IPTABLES)
    in_netns(ns, lambda: _apply("iptables-nft", host_state(ONE, FACTS).firewall))
    assert "MULTINIC-DNAT" in sh(ns, "iptables-nft-save -t nat")
    assert in_netns(ns, _leftovers, "nftables") == ["iptables-nft chains in mangle, nat"]
    assert "MULTINIC" not in sh(ns, "iptables-nft-save -t nat") and "MULTINIC-FORWARD" in sh(ns, "iptables-nft -S")
    in_netns(ns, lambda: _apply("nftables", host_state(ONE, FACTS).firewall))
    assert in_netns(ns, _leftovers, "nft") == ["table ip multinic"]
    assert "multinic" not in sh(ns, "nft list tables")


def _apply(flavour: str, ruleset: Ruleset) -> None:
    from plugin.kernel.firewall import firewall_for

    firewall_for(flavour, settings()).v4.apply(ruleset)


def _opening_once_dockers_legacy_chains_appear(ruleset: Ruleset, ns: str) -> dict:
    """The native backend chosen while Docker had written nothing (boot), its opening looked for again once
    Docker's chains appear in the legacy tables (a managed plugin, whose own ``iptables`` is nft, on a
    legacy host): the healer's drift names it, and the repair's apply opens the FORWARD DROP."""
    from plugin.kernel.firewall.native import NativeBackend

    backend = NativeBackend(4, xtables_lock())
    backend.apply(ruleset)
    out = {"before": backend.opening_backend()}
    sh(ns, DOCKERS_IPTABLES.replace("iptables ", "iptables-legacy "))
    out["drift"] = backend.drift(ruleset)
    backend.apply(ruleset)
    out["after"] = backend.drift(ruleset)
    out["name"] = backend.opening_backend().name
    backend.remove()
    return out


def test_dockers_legacy_chains_written_after_the_choice_are_opened(ns):
    out = in_netns(ns, _opening_once_dockers_legacy_chains_appear, host_state(ONE, FACTS).firewall, ns)
    assert out["before"] is None and any("Docker's FORWARD" in r for r in out["drift"]), out
    assert out["after"] == [] and "legacy" in out["name"]
    assert "MULTINIC" not in sh(ns, "iptables-legacy-save") and ":FORWARD DROP" in sh(ns, "iptables-legacy-save")
