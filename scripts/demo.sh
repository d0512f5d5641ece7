#!/usr/bin/env bash
# The main job: a namespace lab with a fake two-NIC host, a real dockerd and the plugin,
# showing both seed problems with Docker's bridge driver and fixed with multinic.
set -euo pipefail
cd "$(dirname "$0")/.."
MULTINIC_ENGINES=${MULTINIC_DEMO_ENGINE:-20.10} bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py
