"""Background work beside the HTTP workers: the healer (drift, parent NICs, a lost state), the gateway
watcher (default routes inside containers), and the supervisor that keeps them running."""
