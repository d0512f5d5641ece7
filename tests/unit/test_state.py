import json
import multiprocessing

from plugin.state import EndpointRecord, NetworkRecord, PublishedPort, State, Store


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
