#!/usr/bin/env bash
# All of multinic's tests, as root on a fresh Debian 12 machine: unit tests, kernel
# integration tests in scratch namespaces, end-to-end tests against real dockerd
# (Engine 20.10 and 28.5) in a namespace lab. Extra arguments go to one pytest run over them.
#
# Without arguments the unit and kernel-integration tests run beside the end-to-end ones, in a
# second pytest: they share nothing with the labs (namespaces, state directories, xtables lock and
# sockets are their own), and the end-to-end tests mostly wait on dockerd. Their report follows the
# end-to-end one; the exit status fails if either failed. MULTINIC_TEST_SERIAL=1 runs one pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MULTINIC_ENGINES=${MULTINIC_ENGINES:-20.10,28.5}
.venv/bin/ruff check .
pytest=(.venv/bin/python -m pytest -v -rs --durations=15)
if (($#)) || [[ ${MULTINIC_TEST_SERIAL:-} == 1 ]]; then
  exec "${pytest[@]}" tests "$@"
fi
report=$(mktemp /tmp/multinic-tests-kernel.XXXXXX)
trap 'rm -f "$report"' EXIT  # an interrupted run leaves no report behind either
trap 'kill -- -$kernel 2>/dev/null || true' INT TERM
set -m  # the kernel tests in a process group of their own, stopped with this script
"${pytest[@]}" -p no:cacheprovider tests/unit tests/integration >"$report" 2>&1 &
kernel=$!
set +m
e2e=0
"${pytest[@]}" tests/e2e || e2e=$?
kernel_rc=0
wait "$kernel" || kernel_rc=$?
echo "=================== unit and kernel-integration tests (run beside the above) ==================="
cat "$report"
echo "multinic tests: end to end exit $e2e, unit and kernel integration exit $kernel_rc"
((e2e == 0 && kernel_rc == 0))
