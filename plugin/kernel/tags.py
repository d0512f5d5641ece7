"""How the plugin marks what it adds to the kernel, so it can be found, listed and removed.

- links (bridges, veths): ``IFLA_IFALIAS`` starting with :data:`ALIAS_PREFIX`;
- routes and ip rules: routing protocol number :data:`RT_PROTO`;
- firewall: chains named ``MULTINIC-*``, jumps commented :data:`COMMENT`;
- connection/packet marks: the bits of :data:`MARK_MASK` only.
"""

ALIAS_PREFIX = "multinic:"
RT_PROTO = 211
COMMENT = "multinic"
CHAIN_PREFIX = "MULTINIC-"

# One mark per parent NIC, kept in bits 16..23 so other users of the mark
# (kube-proxy 0x4000/0x8000, Docker's ingress marks) are left alone.
MARK_MASK = 0x00FF0000
MARK_SHIFT = 16
MAX_MARK_SLOT = 0xFE
# Slot 0xFF marks connections that entered a multinic bridge from anywhere but a parent NIC
# (eth0, another bridge, a given HostIP): their replies follow the main table, not the parent's.
MAIN_MARK_SLOT = 0xFF

# ip rule priorities on the host. Fixed: several rules may share one priority.
RULE_PREF_FWMARK = 10000
RULE_PREF_LOCAL = 10001
RULE_PREF_SOURCE = 10002

# Route tables allocated when the user gives none.
TABLE_ALLOC_FIRST = 20000
TABLE_ALLOC_LAST = 20999

LINK_BRIDGE = "net"
LINK_VETH = "ep"
# A veth whose endpoint is gone, waiting for its deletion (deferred off the request path).
LINK_GONE = "gone"


def mark_for_slot(slot: int) -> int:
    """The fwmark value of mark slot ``slot`` (1..255)."""
    return (slot << MARK_SHIFT) & MARK_MASK


def link_alias(kind: str, object_id: str) -> str:
    """The alias a link carries: ``multinic:net:<network id>``, ``multinic:ep:<endpoint id>``, or
    ``multinic:gone:<endpoint id>`` once retired."""
    return f"{ALIAS_PREFIX}{kind}:{object_id}"


def parse_link_alias(alias: str | None) -> tuple[str, str] | None:
    """(kind, id) for one of our aliases, None for anything else."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    kind, _, object_id = alias[len(ALIAS_PREFIX) :].partition(":")
    if kind not in (LINK_BRIDGE, LINK_VETH, LINK_GONE) or not object_id:
        return None
    return kind, object_id
