"""The native nftables backend: multinic's own tables ``ip multinic`` and ``ip6 multinic``, written in this
process through libnftables (:mod:`.nft`), one transaction per change. The same :class:`.model.Ruleset`
the iptables backends write is rendered here (:func:`document`, :func:`statement`): our chains keep their
names, the jumps from built-in chains become base chains on the same hooks, and the published ports'
DNAT rules become elements of two maps, so a Join or Leave adds or deletes one element per port whatever
the host holds. Where Docker keeps its own FORWARD DROP in iptables, the same-bridge accepts also open
it (:func:`opening`, written by the iptables backend of Docker's flavour). docs/ARCHITECTURE.md tells why.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ...errors import Failure
from ...settings import DEFAULT_XTABLES_LOCK
from ..tags import COMMENT
from . import nft
from .model import (
    CHAINS,
    DOCKER_USER,
    FILTER_ACCEPT,
    FILTER_FORWARD,
    JUMPS,
    NAT_DNAT,
    NAT_DNAT_BUCKETS,
    TABLES,
    Edit,
    FirewallBackend,
    Jump,
    Rule,
    Ruleset,
)
from .view import render

TABLE = "multinic"
PUBLISHED = "published"  # (parent address . protocol . port) : (container address . port)
PUBLISHED_ANY = "published-any"  # (protocol . port) : (container address . port), every local address
COMMENT_MAX = 128  # nft's limit on a rule comment

# The hook each jump into our chains stands for (iptables table, built-in chain) → base chain: (name,
# type, hook, priority). Both ways into MULTINIC-FORWARD (DOCKER-USER, FORWARD) are the forward hook.
HOOKS: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("mangle", "PREROUTING"): ("mangle-PREROUTING", "filter", "prerouting", "mangle"),
    ("mangle", "POSTROUTING"): ("mangle-POSTROUTING", "filter", "postrouting", "mangle"),
    ("nat", "PREROUTING"): ("nat-PREROUTING", "nat", "prerouting", "dstnat"),
    ("nat", "OUTPUT"): ("nat-OUTPUT", "nat", "output", "-100"),  # dstnat (nft 1.0.6 names it for prerouting only)
    ("nat", "POSTROUTING"): ("nat-POSTROUTING", "nat", "postrouting", "srcnat"),
    ("filter", "FORWARD"): ("filter-FORWARD", "filter", "forward", "filter"),
    ("filter", DOCKER_USER): ("filter-FORWARD", "filter", "forward", "filter"),
}
STATES = {"NEW": "new", "RELATED": "related", "ESTABLISHED": "established", "INVALID": "invalid"}
STATUSES = {"DNAT": "dnat", "SNAT": "snat"}
VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "RETURN": "return"}


def nfamily(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def comment(rule: Rule) -> str:
    """A rule's comment in our tables: its ``iptables -S`` text, which names it (deletions find the rule's
    handle by it, drift compares it). Longer than nft allows: cut, with a digest of the whole."""
    text = render(rule).replace('"', "'")
    if len(text) > COMMENT_MAX:
        text = f"{text[:COMMENT_MAX - 17]} #{hashlib.sha1(text.encode()).hexdigest()[:15]}"
    return text


def _address(value: str, family: int) -> str:
    """``10.0.0.1/32`` → ``10.0.0.1``; a network stays a network."""
    net = ipaddress.ip_network(value, strict=False)
    host = 32 if family == 4 else 128
    return str(net.network_address) if net.prefixlen == host else str(net)


def _mark(value: str) -> tuple[int, int]:
    v, _, m = value.partition("/")
    return int(v, 0), int(m, 0) if m else 0xFFFFFFFF


def _options(tokens: list[str], i: int) -> tuple[dict[str, str], int]:
    """``--name value`` pairs (a lone ``--name`` is ``""``) from ``tokens[i]`` up to the next ``-j``/``-m``."""
    out: dict[str, str] = {}
    while i < len(tokens) and tokens[i].startswith("--"):
        name = tokens[i]
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            out[name], i = tokens[i + 1], i + 2
        else:
            out[name], i = "", i + 1
    return out, i


def statement(rule: Rule, family: int) -> str:
    """One of our iptables rules as an nft rule (without its comment). Covers the vocabulary
    :mod:`.rules` writes (a unit test runs every shape through it); anything else is a ValueError."""
    tokens, out, i, neg = list(rule), [], 0, False
    ip = nfamily(family)
    while i < len(tokens):
        tok = tokens[i]
        op = "!= " if neg else ""
        if tok == "!":
            neg, i = True, i + 1
            continue
        if tok in ("-i", "-o"):
            name = tokens[i + 1].replace("+", "*")
            out.append(f'{"iifname" if tok == "-i" else "oifname"} {op}"{name}"')
            i += 2
        elif tok in ("-s", "-d"):
            out.append(f"{ip} {'saddr' if tok == '-s' else 'daddr'} {op}{_address(tokens[i + 1], family)}")
            i += 2
        elif tok == "-p":
            proto, i = tokens[i + 1], i + 2
            if i + 1 < len(tokens) and tokens[i] == "-m" and tokens[i + 1] == proto:
                opts, i = _options(tokens, i + 2)
                ports = [f"{proto} {k[2:]} {v}" for k, v in opts.items() if k in ("--dport", "--sport")]
                if len(ports) != len(opts):
                    raise ValueError(f"no nft form for {rule}")
                out += ports or [f"meta l4proto {op}{proto}"]
            else:
                out.append(f"meta l4proto {op}{proto}")
        elif tok == "-m":
            module, (opts, i) = tokens[i + 1], _options(tokens, i + 2)
            out.append(_match(module, opts, op, family, rule))
        elif tok == "-j":
            target, (opts, i) = tokens[i + 1], _options(tokens, i + 2)
            out.append(_target(target, opts, family, rule))
        else:
            raise ValueError(f"no nft form for {tok!r} in {rule}")
        neg = False
    return " ".join(filter(None, out))


def _match(module: str, opts: dict[str, str], op: str, family: int, rule: Rule) -> str:
    if module == "conntrack" and set(opts) == {"--ctstate"}:
        values = opts["--ctstate"].split(",")
        if all(v in STATES for v in values):
            return f"ct state {op}{','.join(STATES[v] for v in values)}"
        if len(values) == 1 and values[0] in STATUSES:
            return f"ct status {op}{STATUSES[values[0]]}"
    if module == "connmark" and set(opts) == {"--mark"}:
        value, mask = _mark(opts["--mark"])
        return f"ct mark and {mask:#x} {op or '== '}{value:#x}"
    if module == "addrtype" and set(opts) == {"--dst-type"} and opts["--dst-type"] == "LOCAL":
        return f"fib daddr type {op}local"
    if module == "comment":
        return ""  # our rules carry their own text as comment
    raise ValueError(f"no nft form for -m {module} in {rule}")


def _target(target: str, opts: dict[str, str], family: int, rule: Rule) -> str:
    if target in VERDICTS and not opts:
        return VERDICTS[target]
    if target == "MASQUERADE" and not opts:
        return "masquerade"
    if target == "SNAT" and set(opts) == {"--to-source"}:
        return f"snat to {opts['--to-source']}"
    if target == "CONNMARK" and set(opts) == {"--set-xmark"}:
        value, mask = _mark(opts["--set-xmark"])
        return f"ct mark set ct mark and {~mask & 0xFFFFFFFF:#x} xor {value:#x}"
    if target == "CONNMARK" and set(opts) == {"--restore-mark", "--nfmask", "--ctmask"} and \
            opts["--nfmask"] == opts["--ctmask"]:
        # nft (1.0) cannot OR two run-time values: the packet mark's other bits are not kept. A packet
        # from a container arrives with mark 0 (a veth clears it between namespaces).
        return f"meta mark set ct mark and {int(opts['--ctmask'], 0):#x}"
    if target.startswith("MULTINIC-") and not opts:
        return f"jump {target}"
    raise ValueError(f"no nft form for -j {target} in {rule}")


@dataclass(frozen=True)
class Element:
    """A published port in one of the maps: key → data, as nft writes them."""

    map: str
    key: tuple[str, ...]
    data: tuple[str, ...]

    @property
    def key_text(self) -> str:
        return " . ".join(self.key)

    @property
    def text(self) -> str:
        return f"{self.key_text} : {' . '.join(self.data)}"


def element(rule: Rule, family: int) -> Element:
    """A DNAT rule of a bucket chain (``[-d A/32] -p P -m P --dport N -j DNAT --to-destination IP:PORT``) as
    the map element that replaces it."""
    tokens = list(rule)
    opts = {tokens[i]: tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i].startswith("-")}
    to = opts.get("--to-destination", "")
    if opts.get("-j") != "DNAT" or "-p" not in opts or "--dport" not in opts or ":" not in to:
        raise ValueError(f"not a published port: {rule}")
    ip, _, port = to.rpartition(":")
    data = (str(ipaddress.ip_address(ip.strip("[]"))), str(int(port)))
    proto = opts["-p"]
    if "-d" in opts:
        return Element(PUBLISHED, (_address(opts["-d"], family), proto, str(int(opts["--dport"]))), data)
    return Element(PUBLISHED_ANY, (proto, str(int(opts["--dport"]))), data)


def _map_types(family: int) -> dict[str, str]:
    addr = "ipv6_addr" if family == 6 else "ipv4_addr"
    data = f"{addr} . inet_service"
    return {PUBLISHED: f"{addr} . inet_proto . inet_service : {data}",
            PUBLISHED_ANY: f"inet_proto . inet_service : {data}"}


def _dnat_rules(family: int) -> tuple[str, ...]:
    """The whole of MULTINIC-DNAT here: two map lookups (a given address first, then any local one)."""
    ip = nfamily(family)
    return (f"dnat to {ip} daddr . meta l4proto . th dport map @{PUBLISHED}",
            f"dnat to meta l4proto . th dport map @{PUBLISHED_ANY}")


def base_chains() -> dict[str, tuple[str, str, str, tuple[Jump, ...]]]:
    """Our base chains: name → (type, hook, priority, the jumps it makes), from :data:`.model.JUMPS`."""
    out: dict[str, tuple[str, str, str, tuple[Jump, ...]]] = {}
    for jump in JUMPS:
        name, kind, hook, prio = HOOKS[(jump.table, jump.chain)]
        jumps = out[name][3] if name in out else ()
        if all(j.target != jump.target or j.match != jump.match for j in jumps):
            jumps = (*jumps, jump)
        out[name] = (kind, hook, prio, jumps)
    return out


def _jump_rule(jump: Jump, family: int) -> str:
    return f'{statement((*jump.match, "-j", jump.target), family)} comment "{COMMENT}"'


def _bucket(chain: str) -> bool:
    return chain in NAT_DNAT_BUCKETS


def document(ruleset: Ruleset, family: int) -> str:
    """The whole table ``<ip|ip6> multinic`` for ``ruleset``, as one nft definition."""
    lines = [f"table {nfamily(family)} {TABLE} {{"]
    elements: dict[str, list[str]] = {PUBLISHED: [], PUBLISHED_ANY: []}
    for chain in NAT_DNAT_BUCKETS:
        for rule in ruleset.rules("nat", chain):
            e = element(rule, family)
            elements[e.map].append(e.text)
    for name, kind in _map_types(family).items():
        lines += [f"\tmap {name} {{", f"\t\ttype {kind}"]
        if elements[name]:
            lines.append(f"\t\telements = {{ {', '.join(elements[name])} }}")
        lines.append("\t}")
    for name, (kind, hook, prio, jumps) in base_chains().items():
        lines += [f"\tchain {name} {{", f"\t\ttype {kind} hook {hook} priority {prio}; policy accept;",
                  *(f"\t\t{_jump_rule(j, family)}" for j in jumps), "\t}"]
    for table in TABLES:
        for chain in CHAINS[table]:
            if _bucket(chain):
                continue
            body = _dnat_rules(family) if chain == NAT_DNAT else tuple(
                f'{statement(rule, family)} comment "{comment(rule)}"' for rule in ruleset.rules(table, chain))
            lines += [f"\tchain {chain} {{", *(f"\t\t{r}" for r in body), "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def edit_commands(edits: Iterable[Edit], family: int, handles: Callable[[str], dict[str, list[int]]]) -> list[str]:
    """Pure but for ``handles`` (chain → comment → handles, read from the kernel for chains a rule is
    deleted from): the commands of one transaction. A published port is one element added or deleted;
    another rule is appended, or deleted by its handle."""
    table = f"{nfamily(family)} {TABLE}"
    out: list[str] = []
    found: dict[str, dict[str, list[int]]] = {}
    for e in edits:
        if _bucket(e.chain):
            el = element(e.rule, family)
            out.append(f"add element {table} {el.map} {{ {el.text} }}" if e.action == "-A"
                       else f"delete element {table} {el.map} {{ {el.key_text} }}")
        elif e.action == "-A":
            out.append(f'add rule {table} {e.chain} {statement(e.rule, family)} comment "{comment(e.rule)}"')
        else:
            if e.chain not in found:
                found[e.chain] = handles(e.chain)
            left = found[e.chain].get(comment(e.rule))
            if not left:
                raise Failure(f"nftables: {e.chain} of table {table} has no rule {render(e.rule)!r} to delete")
            out.append(f"delete rule {table} {e.chain} handle {left.pop(0)}")
    return out


def opening(ruleset: Ruleset) -> Ruleset:
    """Pure: what opens Docker's iptables FORWARD DROP for our bridges (their traffic is judged by our
    table, whose drops are final): ``-i B -j ACCEPT`` and ``-o B -j ACCEPT`` in MULTINIC-FORWARD, per
    bridge, derived from each bridge's same-bridge accept."""
    rules = tuple(r for rule in ruleset.rules("filter", FILTER_ACCEPT) for r in _opening_of(rule))
    return Ruleset(chains={"filter": {FILTER_FORWARD: rules}}) if rules else Ruleset()


def _opening_of(rule: Rule) -> tuple[Rule, ...]:
    if len(rule) == 6 and rule[0] == "-i" and rule[2] == "-o" and rule[1] == rule[3] and rule[-1] == "ACCEPT":
        return ("-i", rule[1], "-j", "ACCEPT"), ("-o", rule[1], "-j", "ACCEPT")
    return ()


def opening_edits(edits: Iterable[Edit]) -> tuple[Edit, ...]:
    """Pure: the opening's edits that follow ``edits`` (a bridge's same-bridge accept came or went)."""
    return tuple(Edit("filter", FILTER_FORWARD, e.action, r) for e in edits
                 if e.table == "filter" and e.chain == FILTER_ACCEPT for r in _opening_of(e.rule))


def edit_together(todo: Iterable[tuple[NativeBackend, tuple[Edit, ...], Callable[[], Ruleset]]]) -> None:
    """The edits of our tables (both families for a dual-stack verb) as ONE libnftables transaction. The
    opening of Docker's iptables FORWARD (an iptables transaction of its own, only when a bridge came or
    went) closes before it and opens after it. A deletion the kernel cannot match refuses the whole
    transaction, both families (the writer then re-applies the whole host)."""
    commands: list[str] = []
    opens: list[tuple[FirewallBackend, tuple[Edit, ...], Callable[[], Ruleset]]] = []
    for backend, edits, full in todo:
        if not edits:
            continue
        gates = opening_edits(edits)  # a bridge came or went: only then is Docker's iptables looked at
        opener = backend.opening_backend() if gates else None
        if opener is not None:
            shut = tuple(e for e in gates if e.action == "-D")
            if shut:
                opener.edit(shut, lambda full=full: opening(full()))
            if len(shut) < len(gates):
                opens.append((opener, tuple(e for e in gates if e.action == "-A"), full))
        commands += edit_commands(edits, backend.family, backend._handles)
    if commands:
        nft.run("\n".join(commands))
    for opener, gates, full in opens:
        opener.edit(gates, lambda full=full: opening(full()))


# -- reading the kernel ---------------------------------------------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    return str(v)


def _concat(v: Any) -> tuple[str, ...]:
    items = v["concat"] if isinstance(v, dict) and "concat" in v else [v]
    return tuple(_value(x) for x in items)


def _normal(values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_address(v)))
        except ValueError:
            out.append(v)
    return tuple(out)


@dataclass
class Table:
    """Our table as the kernel holds it: base chains (name → (hook, priority)), each chain's rule comments
    with their handles, each map's elements."""

    exists: bool = False
    base: dict[str, tuple[str, int]] | None = None
    rules: dict[str, list[tuple[str, int]]] | None = None
    maps: dict[str, dict[tuple[str, ...], tuple[str, ...]]] | None = None

    @classmethod
    def parse(cls, items: list[dict[str, Any]]) -> Table:
        t = cls(exists=any("table" in i for i in items), base={}, rules={}, maps={})
        assert t.base is not None and t.rules is not None and t.maps is not None
        for item in items:
            if "chain" in item:
                c = item["chain"]
                t.rules.setdefault(c["name"], [])
                if "hook" in c:
                    t.base[c["name"]] = (c["hook"], int(c.get("prio", 0)))
            elif "rule" in item:
                r = item["rule"]
                t.rules.setdefault(r["chain"], []).append((r.get("comment", ""), int(r["handle"])))
            elif "map" in item:
                m = item["map"]
                t.maps[m["name"]] = {_normal(_concat(k)): _normal(_concat(v)) for k, v in m.get("elem", [])}
        return t


PRIORITIES = {"filter": 0, "mangle": -150, "dstnat": -100, "srcnat": 100}


def priority(name: str) -> int:
    return PRIORITIES[name] if name in PRIORITIES else int(name)


def table_drift(table: Table, ruleset: Ruleset, family: int) -> list[str]:
    """Pure: how our table differs from ``ruleset`` (empty: in sync). Rules compare by their comments, as
    multisets per chain (the order between networks does not matter); published ports by map element."""
    name = f"table {nfamily(family)} {TABLE}"
    if ruleset.is_empty():
        return [f"{name} exists, no network needs it"] if table.exists else []
    if not table.exists:
        return [f"{name} missing"]
    assert table.base is not None and table.rules is not None and table.maps is not None
    reasons = []
    for chain, (_kind, hook, prio, jumps) in base_chains().items():
        want = Counter(COMMENT for _ in jumps)
        if table.base.get(chain) != (hook, priority(prio)) or Counter(c for c, _ in table.rules[chain]) != want:
            reasons.append(f"{name}: base chain {chain} missing or changed")
    for t in TABLES:
        for chain in CHAINS[t]:
            if _bucket(chain) or chain == NAT_DNAT:
                continue
            want = Counter(comment(rule) for rule in ruleset.rules(t, chain))
            if chain not in table.rules:
                reasons.append(f"{name}: chain {chain} missing")
            elif Counter(c for c, _ in table.rules[chain]) != want:
                reasons.append(f"{name}: {chain} differs from the state")
    if len(table.rules.get(NAT_DNAT, ())) != len(_dnat_rules(family)):
        reasons.append(f"{name}: {NAT_DNAT} missing or changed")
    wanted = wanted_elements(ruleset, family)
    for m in (PUBLISHED, PUBLISHED_ANY):
        if table.maps.get(m) != wanted[m]:
            reasons.append(f"{name}: map {m} differs from the published ports")
    return reasons


def wanted_elements(ruleset: Ruleset, family: int) -> dict[str, dict[tuple[str, ...], tuple[str, ...]]]:
    out: dict[str, dict[tuple[str, ...], tuple[str, ...]]] = {PUBLISHED: {}, PUBLISHED_ANY: {}}
    for chain in NAT_DNAT_BUCKETS:
        for rule in ruleset.rules("nat", chain):
            e = element(rule, family)
            out[e.map][_normal(e.key)] = _normal(e.data)
    return out


def _docker_in_iptables_nft(family: int) -> bool:
    """Does Docker keep its chains in iptables-nft's ``filter`` table of this family (read in-process)?"""
    fam = nfamily(family)
    return any(c["family"] == fam and c["table"] == "filter" and (c["name"] == DOCKER_USER or c["name"] == "DOCKER")
               for c in nft.chains())


def legacy_loaded(family: int) -> bool:
    """Legacy tables exist only once their module is loaded (listing them would load it)."""
    try:
        with open(f"/proc/net/{'ip6' if family == 6 else 'ip'}_tables_names") as fh:
            return bool(fh.read().strip())
    except OSError:
        return False


def _docker_in_legacy(family: int) -> bool:
    """Does Docker keep its chains in the legacy ``filter`` table of this family? (No process where the
    legacy tables were never loaded.)"""
    from . import saved_holds

    return legacy_loaded(family) and saved_holds("legacy", ":DOCKER", "filter", family)


def legacy_opening_backend(family: int, xtables_lock: str = DEFAULT_XTABLES_LOCK) -> FirewallBackend:
    """The backend that opens Docker's FORWARD DROP in the legacy ``filter`` table of this family."""
    if family == 6:
        from .restore import RestoreBackend

        return RestoreBackend("legacy", 6, tables=("filter",))
    from .libiptc import LibiptcBackend

    return LibiptcBackend(xtables_lock, tables=("filter",))


class NativeBackend:
    """Our table of one family through libnftables; beside Docker's iptables, the opening of its FORWARD
    DROP through the iptables backend of Docker's flavour (``legacy``: expected there from the start)."""

    def __init__(self, family: int = 4, xtables_lock: str = DEFAULT_XTABLES_LOCK, legacy: bool = False) -> None:
        self.family = family
        self.name = "nftables" if family == 4 else "nftables (ip6)"
        self.table = f"{nfamily(family)} {TABLE}"
        self.xtables_lock = xtables_lock
        self.legacy_opening = legacy_opening_backend(family, xtables_lock) if legacy else None
        nft.run(f"list tables {nfamily(family)}")  # fail at selection time if libnftables cannot be used

    # -- the opening of Docker's iptables FORWARD DROP ---------------------------------------------------
    def opening_backend(self) -> FirewallBackend | None:
        """The iptables backend that opens Docker's FORWARD DROP, while Docker keeps its chains in iptables.
        Looked for again until found: dockerd writes them after the plugin started (at boot), and the
        healer's drift check then finds the opening missing."""
        if self.legacy_opening is not None:
            return self.legacy_opening
        if _docker_in_iptables_nft(self.family):
            from .restore import RestoreBackend

            return RestoreBackend("nft", self.family, tables=("filter",))
        if _docker_in_legacy(self.family):
            self.legacy_opening = legacy_opening_backend(self.family, self.xtables_lock)
            return self.legacy_opening
        return None

    # -- the backend interface -------------------------------------------------------------------------
    def apply(self, ruleset: Ruleset) -> None:
        """The whole table replaced in one transaction (made, emptied, defined again), then the opening."""
        if ruleset.is_empty():
            self.remove()
            return
        nft.run(f"add table {self.table}\ndelete table {self.table}\n{document(ruleset, self.family)}")
        opener = self.opening_backend()
        if opener is not None:
            want = opening(ruleset)
            if want.is_empty():
                opener.remove()
            else:
                opener.apply(want)

    def edit(self, edits: tuple[Edit, ...], full: Callable[[], Ruleset]) -> None:
        """ONE transaction for our table: an element per published port, a rule appended or deleted (by its
        handle, read from the chain it is deleted from) for the rest (:func:`edit_together`)."""
        edit_together(((self, edits, full),))

    def _handles(self, chain: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for item in nft.listing(f"list chain {self.table} {chain}"):
            if "rule" in item:
                out.setdefault(item["rule"].get("comment", ""), []).append(int(item["rule"]["handle"]))
        return out

    def remove(self) -> None:
        nft.run(f"add table {self.table}\ndelete table {self.table}")
        opener = self.opening_backend()
        if opener is not None:
            opener.remove()

    def read_table(self) -> Table:
        return Table.parse(nft.listing(f"list table {self.table}"))

    def drift(self, ruleset: Ruleset) -> list[str]:
        """Our table compared with ``ruleset`` (one listing, in-process); then the opening, if Docker's
        iptables needs one."""
        reasons = table_drift(self.read_table(), ruleset, self.family)
        opener = self.opening_backend()
        if opener is not None:
            from .view import drift

            reasons += [f"Docker's FORWARD (iptables): {r}" for r in drift(opener.read(), opening(ruleset))
                        if r.startswith("filter")]
        return reasons

    def published(self) -> list[Any]:
        """The ports our maps publish, as :class:`plugin.plan.rebuild.Published`."""
        from ...plan.rebuild import Published

        table = self.read_table()
        out = []
        for m, elements in (table.maps or {}).items():
            for key, (ip, port) in elements.items():
                host, proto, host_port = key if m == PUBLISHED else ("", *key)
                out.append(Published(proto, host, int(host_port), ip, int(port)))
        return out

    def dump(self) -> dict[str, list[str]]:
        out = {self.table: nft.text(f"list table {self.table}").splitlines()}
        opener = self.opening_backend()
        if opener is not None:
            out[f"filter ({opener.name}: Docker's FORWARD opened)"] = opener.dump().get("filter", [])
        return out
