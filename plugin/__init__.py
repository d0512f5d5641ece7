"""multinic: a Docker network driver that binds a network to one host NIC.

Every kernel object the plugin owns carries a tag (see :mod:`plugin.tags`) so it
can be listed and removed without guessing.
"""

__version__ = "0.1.0"
