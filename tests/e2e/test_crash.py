"""State survives the plugin being killed (SIGKILL, no cleanup) in the middle of dockerd's calls."""

from __future__ import annotations

import concurrent.futures
import time

from tests.e2e.helpers import IMAGE, network, wait_for


def test_sigkill_during_parallel_starts_then_cleanup_leaves_host_identical(mn):
    lab = mn
    before = lab.dump_host_state()
    lab.serve_peer_echo(lab.c1_ns, 7030)
    names = [f"crash{i}" for i in range(6)]
    try:
        with network(lab, "crashnet", "--opt", "parent=eth1", "--subnet", "10.41.0.0/24"):
            with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
                runs = [pool.submit(lab.docker, "run", "-d", "--name", n, "--network", "crashnet", IMAGE, "sleep",
                                    "3600", check=False, timeout=180) for n in names]
                time.sleep(0.4)
                lab.kill_plugin()
                time.sleep(1)
                lab.start_plugin()  # dockerd's retries reach the new plugin
                results = [r.result() for r in runs]
            started = [n for n, r in zip(names, results, strict=True) if r.returncode == 0]
            # A call cut by the kill fails the user's command with a message saying why: dockerd
            # 20.10 retries it against the new plugin without its body (measured).
            for r in results:
                assert r.returncode == 0 or "run the docker command again" in r.stderr, r.stderr
            assert started, [r.stderr for r in results]
            # every container dockerd says is running on the network really works
            for name in started:
                out = wait_for(lambda n=name: lab.docker("exec", n, "sh", "-c", "nc 198.51.100.10 7030 </dev/null",
                                                         check=False).stdout.strip(), timeout=10)
                assert out == "192.168.101.2", name
            lab.docker("rm", "-f", *names, check=False)
    finally:
        lab.docker("rm", "-f", *names, check=False)
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10), "host not back to its state before"
