"""Pure checks of multinic itself: the state file, the Docker engine, the plugin's socket, its health and
loops, a second instance, ghosts between its state and Docker's networks, a managed plugin's mounts, and
what a swarm node needs."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from ...plan.network import SWARM_CONFIG_HINT
from ...settings import Settings
from ..engine import EngineInfo
from .facts import ERROR, OK, SKIP, WARN, Facts, Result


def check_docker(f: Facts) -> list[Result]:
    name = "docker"
    if f.docker_error:
        return [Result(name, ERROR, f"Docker API not reachable at {f.docker_host or 'the default socket'}: "
                       f"{f.docker_error}", "systemctl start docker, or set DOCKER_HOST to dockerd's socket")]
    engine = EngineInfo(f.docker_version or "", f.docker_api or "")
    if not engine.supported:
        return [Result(name, ERROR, f"Docker {f.docker_version} (API {f.docker_api}) is too old: multinic needs "
                       "Engine 20.10 (API 1.41) or newer", "upgrade docker (docker.io >= 20.10, or docker-ce)")]
    if engine.crashes_on_revoke:
        return [Result(name, ERROR, f"Docker {f.docker_version} crashes (\"sync: unlock of unlocked mutex\") when "
                       "it revokes a remote plugin's external connectivity: moby #51554, fixed in 29.0.3",
                       "upgrade Docker to 29.0.3 or newer")]
    return [Result(name, OK, f"Docker {f.docker_version}, API {f.docker_api}")]

def check_socket(f: Facts) -> list[Result]:
    name = "socket"
    if f.socket_stat is None:
        return [Result(name, ERROR, f"no plugin socket at {f.socket_path} ({f.socket_from}): multinic is not "
                       "serving", "start it: systemctl start multinic (service) or docker plugin enable <plugin>")]
    mode, uid = f.socket_stat["mode"], f.socket_stat["uid"]
    dir_closed = f.socket_dir_stat is not None and not f.socket_dir_stat["mode"] & 0o077 and \
        f.socket_dir_stat["uid"] == 0
    perm = stat.S_IMODE(mode)
    if uid != 0 or (perm & 0o022 and not dir_closed):
        return [Result(name, ERROR, f"{f.socket_path} is mode {perm:04o} owner uid {uid}: any local user who "
                       "can connect rewrites the host's routes and firewall",
                       f"chmod 600 {f.socket_path}; chown root {f.socket_path}; "
                       "upgrade multinic (it serves with umask 077)")]
    return [Result(name, OK, f"{f.socket_path}: mode {perm:04o}, root" + (" (directory 0700)" if dir_closed else ""))]

def _driver_names(f: Facts) -> set[str]:
    names = {Path(f.socket_path).stem, Path(f.legacy_socket_path).stem}
    for p in f.plugins:
        names.add(p["name"])
        names.add(p["name"].split(":")[0] + ":latest" if ":" not in p["name"] else p["name"])
    return names

def check_ghosts(f: Facts, grace: float = Settings.gc_grace) -> list[Result]:
    name = "ghosts"
    if f.docker_networks is None:
        return [Result(name, SKIP, "Docker not reachable: state not compared with Docker's networks")]
    out = []
    drivers = _driver_names(f)
    # A swarm manager lists every swarm-scoped network; one swarm has not made on this node is not here.
    present = {nid: n for nid, n in f.docker_networks.items() if n.get("here", True)}
    docker_ours = {nid: n for nid, n in present.items() if n.get("driver") in drivers}
    state_only = [n for nid, n in f.state.networks.items() if nid not in present]
    if state_only:
        out.append(Result(name, WARN, "networks in multinic's state that Docker no longer has (their bridges, rules "
                          "and ports stay): " + ", ".join(f"{n.id[:12]} ({n.bridge})" for n in state_only),
                          "restart the plugin (it forgets networks dockerd no longer has at start; the healer does "
                          "within MULTINIC_GC_INTERVAL)"))
    docker_only = [n for nid, n in docker_ours.items() if nid not in f.state.networks]
    if docker_only:
        out.append(Result(name, ERROR, "Docker networks of multinic that its state does not know (containers on "
                          "them cannot start): " + ", ".join(f"{n['name']} ({n['driver']})" for n in docker_only),
                          "; ".join(f"docker network rm {n['name']}" for n in docker_only)
                          + "; then create them again (or point multinic at the state directory that has them: "
                          f"--state-dir; this one is {f.state_dir})"))
    known_eps = {ep for n in present.values() for ep in n.get("endpoints", ())}
    ghost_eps = [ep for ep in f.state.endpoints.values()
                 if ep.id not in known_eps and ep.network_id in present and f.now - ep.created > grace]
    if ghost_eps:
        out.append(Result(name, WARN, "endpoints in state with no container in Docker (their veths and ports stay): "
                          + ", ".join(ep.id[:12] for ep in ghost_eps),
                          "wait for the healer's garbage collection, or restart the plugin"))
    missing_eps = [(nid, ep) for nid, n in docker_ours.items() if nid in f.state.networks
                   for ep in n.get("endpoints", ()) if ep not in f.state.endpoints]
    if missing_eps:
        out.append(Result(name, ERROR, "containers Docker attaches to multinic networks with no endpoint in state: "
                          + ", ".join(ep[:12] for _, ep in missing_eps), "docker restart those containers"))
    return out or [Result(name, OK, f"state matches Docker: {len(f.state.networks)} network(s), "
                          f"{len(f.state.endpoints)} endpoint(s)")]


def check_swarm(f: Facts) -> list[Result]:
    """Swarm refuses legacy network plugins; a swarm-scoped network without ``--config-from`` lost its
    options (every task on it is refused at the node's CreateNetwork)."""
    name = "swarm"
    if not f.swarm_node:
        return [Result(name, SKIP, "not a swarm node")]
    managed = next((p for p in f.plugins if p.get("enabled")), None)
    if managed is None:
        return [Result(name, WARN, f"this dockerd is a swarm {f.swarm_node}, and multinic is not a managed plugin "
                       "here: swarm refuses legacy network plugins (\"legacy plugin ... is not supported in swarm "
                       "mode\"), so services cannot use multinic networks (standalone containers still can)",
                       "install the managed plugin with the same name:tag on every node, managers included: docker "
                       "plugin install --grant-all-permissions --alias multinic REGISTRY/multinic:TAG (docs/SWARM.md)")]
    drivers = _driver_names(f)
    ours = {nid: n for nid, n in (f.docker_networks or {}).items()
            if n.get("driver") in drivers and n.get("scope") == "swarm"}
    lost = sorted(n["name"] for n in ours.values() if not n.get("config_from"))
    if lost:
        return [Result(name, ERROR, f"swarm-scoped multinic network(s) {', '.join(lost)} were created without "
                       "--config-from: swarm dropped their -o and --subnet, and multinic refuses every task on them",
                       f"docker service rm the services on them; docker network rm {' '.join(lost)}; then "
                       f"{SWARM_CONFIG_HINT}")]
    here = sum(1 for n in ours.values() if n.get("here", True))
    return [Result(name, OK, f"swarm {f.swarm_node}; managed plugin {managed['name']}: {len(ours)} swarm-scoped "
                   f"multinic network(s) listed by dockerd, {here} made on this node now")]


def check_instances(f: Facts) -> list[Result]:
    name = "instances"
    seen = []
    if f.legacy_socket_alive:
        seen.append(f"legacy plugin on {f.legacy_socket_path}")
    seen += [f"managed plugin {p['name']} ({p['id'][:12]})" for p in f.plugins if p.get("enabled")]
    pids = {p.pid for p in f.processes}
    roots = [p for p in f.processes if p.ppid not in pids]
    if len(roots) > 1 or len(seen) > 1:
        listing = seen + [f"pid {p.pid}: {p.cmdline}" for p in roots]
        return [Result(name, ERROR, "more than one multinic runs on this host; they fight over the same rules, "
                       "tables and marks: " + "; ".join(listing),
                       "keep one: docker plugin disable <plugin> (managed) or systemctl disable --now multinic "
                       "(service); kill stray pids")]
    what = seen[0] if seen else (f"pid {roots[0].pid}" if roots else "none running")
    return [Result(name, OK, f"one instance: {what}")]

def _alive(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        for key in ("alive", "healthy", "ok", "running"):
            if isinstance(value.get(key), bool):
                return value[key]
    return None

def health_loops(health: dict[str, Any]) -> dict[str, bool]:
    """Loop name → alive from whatever shape ``/Plugin.Health`` has: ``{"healer": {"alive": ..}}``,
    ``{"loops": {"healer": true}}``, ``{"loops": [{"name": "healer", "alive": ..}]}``; {} for the plain shape."""
    found: dict[str, bool] = {}
    for container_key in ("loops", "helpers", "background", "processes"):
        sub = health.get(container_key)
        if isinstance(sub, dict):
            for key, value in sub.items():
                if (alive := _alive(value)) is not None:
                    found[key] = alive
        elif isinstance(sub, list):
            for item in sub:
                if isinstance(item, dict) and "name" in item and (alive := _alive(item)) is not None:
                    found[str(item["name"])] = alive
    for key in ("healer", "watcher"):
        if key in health and (alive := _alive(health[key])) is not None:
            found[key] = alive
    return found

def check_health(f: Facts) -> list[Result]:
    name = "health"
    if f.socket_stat is None:
        return [Result(name, SKIP, "no plugin socket to ask (see the socket check)")]
    if f.health is None:
        return [Result(name, ERROR, f"/Plugin.Health on {f.socket_path} did not answer: {f.health_error}",
                       "look at the plugin's log (journalctl -u multinic, or dockerd's log for a managed plugin)")]
    out = []
    if f.health.get("healthy") is False:
        problems = f.health.get("problems")
        why = "; ".join(map(str, problems)) if isinstance(problems, list) and problems else json.dumps(f.health)
        out.append(Result(name, ERROR, f"plugin reports unhealthy: {why}", "restart the plugin and read its log"))
    loops = health_loops(f.health)
    if not loops:
        out.append(Result(name, OK if not out else WARN, f"plugin {f.health.get('version', '?')} answers; it does not "
                          "report its healer/watcher loops (older Health shape), not checked"))
        return out
    dead = sorted(k for k, v in loops.items() if not v)
    missing = [k for k in ("healer", "watcher") if k not in loops]
    if dead:
        out.append(Result(name, ERROR, f"plugin's {', '.join(dead)} loop(s) not alive: drift is not repaired / "
                          "gateway priority not applied", "restart the plugin and read its log"))
    elif missing:
        out.append(Result(name, WARN, f"Health reports {', '.join(sorted(loops))} but not {', '.join(missing)}"))
    else:
        out.append(Result(name, OK, "alive: " + ", ".join(sorted(loops))))
    return out

def check_state(f: Facts) -> list[Result]:
    name = "state"
    if f.state_error:
        return [Result(name, ERROR, f"{f.state_dir}/state.json cannot be read: {f.state_error}",
                       "restart the plugin: it sets the file aside and rebuilds the state from dockerd and the "
                       "kernel, changing nothing meanwhile; never delete the state by hand while networks exist, "
                       "nor copy state.json.bak over it (it is one save older)")]
    if f.state_dir_stat is None:
        return [Result(name, OK, f"{f.state_dir} does not exist yet (no network created)")]
    if f.state_dir_stat["mode"] & 0o022 or f.state_dir_stat["uid"] != 0:
        return [Result(name, WARN, f"{f.state_dir} is mode {stat.S_IMODE(f.state_dir_stat['mode']):04o} uid "
                       f"{f.state_dir_stat['uid']}: others can rewrite what multinic applies to the kernel",
                       f"chown root {f.state_dir} && chmod 700 {f.state_dir}")]
    return [Result(name, OK, f"{f.state_dir}: {len(f.state.networks)} network(s), {len(f.state.endpoints)} "
                   "endpoint(s)")]

def check_managed_mounts(f: Facts) -> list[Result]:
    """A bind mount whose source is missing makes ``docker plugin enable`` fail (facts.md)."""
    out = []
    for p in f.plugins:
        for src in p.get("missing_mounts") or ():
            if src.endswith(".lock"):
                # The lock is the one iptables takes, made when first taken (by iptables, or multinic's
                # O_CREAT); one made by hand goes with /run at the next reboot.
                fix = (f"install the current plugin, which binds /var/lib and /run (both always exist): "
                       f"docker plugin disable -f {p['name']} && docker plugin upgrade --grant-all-permissions "
                       f"--skip-remote-check {p['name']} REGISTRY/multinic:NEWTAG (README, Upgrade); never create "
                       f"{src} by hand")
            else:
                fix = f"mkdir -p -m 700 {src}; or docker plugin set {p['name']} <mount>.source=<existing path>"
            out.append(Result("plugin_mounts", ERROR if not p.get("enabled") else WARN,
                              f"managed plugin {p['name']}: mount source {src} does not exist, so `docker plugin "
                              "enable` fails (and after a reboot, /run is empty again)", fix))
    return out
