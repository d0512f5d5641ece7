"""For operators: the ``multinic`` command, ``status``, ``doctor``, health, metrics, and Docker's API."""
