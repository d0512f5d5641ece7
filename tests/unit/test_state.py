import json
import multiprocessing

from plugin.plan.state import EndpointRecord, NetworkRecord, ParentRecord, PublishedPort, State, Store


def test_round_trip(tmp_path):
    store = Store(tmp_path)
    state = State()
    state.networks["n"] = NetworkRecord(id="n", bridge="b", subnet="10.0.0.0/24", gateway="10.0.0.1/24")
    state.endpoints["e"] = EndpointRecord(id="e", network_id="n", address="10.0.0.2/24", mac="m", host_veth="h",
                                          peer_veth="p", ports=(PublishedPort("tcp", "", 1, 2),))
    store.save(state)
    assert store.load() == state
    assert json.loads((tmp_path / "state.json").read_text())["version"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".state.")]


def _bump(directory, n):
    store = Store(directory)
    for _ in range(n):
        with store.locked() as state:
            key = f"k{len(state.networks)}"
            state.networks[key] = NetworkRecord(id=key, bridge=key, subnet="10.0.0.0/24", gateway="10.0.0.1/24")
            store.save(state)


def test_lock_serialises_processes(tmp_path):
    procs = [multiprocessing.get_context("fork").Process(target=_bump, args=(tmp_path, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(Store(tmp_path).load().networks) == 80


def test_save_keeps_the_replaced_file_as_backup_which_check_never_puts_back(tmp_path):
    """The backup is one save older: it may lack what the last verb made, so an unreadable file is reported
    (and then set aside, the state rebuilt from dockerd), and the backup serves only as hints."""
    import pytest

    from plugin.plan.state import StateCorrupt, Store

    store = Store(tmp_path)
    first = State()
    store.save(first)
    first.parents["eth1"] = ParentRecord(rp_filter_before=1)
    store.save(first)
    assert store.backup_path.exists() and '"eth1"' not in store.backup_path.read_text()
    store.path.write_text('{"version": 1, "networks": ')  # truncated
    with pytest.raises(StateCorrupt, match="unreadable"):
        store.load()
    usable, error = store.check()
    assert not usable and "unreadable" in error
    assert store.path.read_text() == '{"version": 1, "networks": '  # untouched until set aside
    kept = store.set_aside()
    assert not store.path.exists() and (tmp_path / kept).read_text() == '{"version": 1, "networks": '
    assert store.backup() == State()  # the last good copy, read as hints
    store.backup_path.write_text("garbage")
    assert store.backup() is None


def test_two_workers_see_each_others_saves_and_the_file_is_what_to_json_gives(tmp_path):
    """Each Store caches what it read and wrote; another worker's save must still be seen, and
    the text written from cached records must be the state's plain JSON."""
    import dataclasses
    import json

    from tests.unit.test_change import endpoint, host, net

    a, b = Store(tmp_path), Store(tmp_path)
    state = host(2, 30)
    a.save(state)
    seen = b.load()
    assert seen == state
    ep = endpoint(77, net(1))
    seen.endpoints[ep.id] = ep
    b.save(seen)
    again = a.load()
    assert ep.id in again.endpoints and again == seen
    again.endpoints[ep.id] = dataclasses.replace(ep, joined=False)
    del again.endpoints[next(iter(sorted(state.endpoints)))]
    a.save(again)
    assert json.loads((tmp_path / "state.json").read_text()) == json.loads(json.dumps(again.to_json()))
    assert b.load() == again and a.load() == again
    changed = a.load()
    changed.networks.clear()  # a caller's changes never reach the cache
    assert a.load() == again
