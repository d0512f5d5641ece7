"""multinic: a Docker network driver that binds a network to one host NIC. The rooms: ``api`` (HTTP in,
typed requests), ``plan`` (the verbs, pure planning, the state), ``kernel`` (the one writer and what it
writes with), ``loops`` (background work), ``ops`` (the command line, doctor, health, metrics); the flow is
drawn in docs/ARCHITECTURE.md."""

__version__ = "0.3.0"

from .kernel.pyroute import defer_init

defer_init()  # before any module of the plugin imports pyroute2 (why: kernel/pyroute.py)
