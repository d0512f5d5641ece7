"""Compose files reach multinic through `driver_opts`: per network (parent, ...) and per service
network (gw_priority)."""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.e2e.conftest import skip_or_fail
from tests.e2e.helpers import COMPOSE, compose, wait_for

COMPOSE_FILE = """
services:
  web:
    image: mn-busybox:latest
    command: ["sh", "-c", "mkdir -p /www && echo compose-hello > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["4030:80"]
    networks:
      a_front: {{}}
      z_back:
        driver_opts:
          gw_priority: "20"
networks:
  a_front:
    driver: {driver}
    driver_opts:
      parent: eth1
    ipam:
      config: [{{subnet: 10.50.0.0/24}}]
  z_back:
    driver: {driver}
    driver_opts:
      parent: eth0
    ipam:
      config: [{{subnet: 10.51.0.0/24}}]
"""


@pytest.fixture
def project(mn, tmp_path):
    if not os.access(COMPOSE, os.X_OK):
        skip_or_fail(f"{COMPOSE} missing (scripts/install-engine28.sh installs it)")
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(COMPOSE_FILE.format(driver=mn.driver)))
    try:
        yield str(tmp_path)
    finally:
        compose(mn, str(tmp_path), "down", "--remove-orphans", check=False)


def test_compose_driver_opts_bind_networks_and_set_priority(mn, project):
    lab = mn
    before = lab.dump_host_state()
    compose(lab, project, "up", "-d")
    cid = compose(lab, project, "ps", "-q", "web").stdout.strip()
    assert cid
    # network driver_opts: a_front is bound to eth1 and publishes there, replies by eth1
    assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4030/")) == "compose-hello\n"
    # service-network driver_opts gw_priority=20 beats the name order (a_front sorts first)
    route = wait_for(lambda: "via 10.51.0.1" in lab.docker("exec", cid, "ip", "route", "get", "198.18.0.1").stdout)
    assert route, lab.docker("exec", cid, "ip", "route", "get", "198.18.0.1").stdout
    compose(lab, project, "down")
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10)
