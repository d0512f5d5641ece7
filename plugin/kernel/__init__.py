"""The kernel: the one writer that makes it match the desired state, and what it writes and reads with
(netlink, the firewall backends, container namespaces, conntrack, events). Everything it adds is tagged."""
