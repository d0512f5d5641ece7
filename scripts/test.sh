#!/usr/bin/env bash
# All of multinic's tests, as root on a fresh Debian 12 machine: unit tests, kernel
# integration tests in scratch namespaces, end-to-end tests against real dockerd
# (Engine 20.10 and 28.5) in a namespace lab. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MULTINIC_ENGINES=${MULTINIC_ENGINES:-20.10,28.5}
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -v -rs --durations=15 tests "$@"
