"""Array records travel packed on the deployment's wire (strategies/transport_packing.py):
the exact arrays come back, so handlers and the server's byte counts see what they see in
simulation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.superlink.grid.http_grid import HttpGrid

from server.loop import payload_bytes
from strategies import transport_packing
from strategies.transport_packing import PREFIX, WHOLE, is_packed, pack, pack_messages, pack_whole, packing_mod, unpack


def _content() -> RecordDict:
    rng = np.random.default_rng(0)
    state = ArrayRecord({"a.weight": Array(rng.normal(size=(4, 3)).astype(np.float32)),
                         "b.bias": Array(np.arange(5, dtype=np.int64)), "scalar": Array(np.array(2.5, dtype=np.float16))})
    return RecordDict({"arrays": state, "one": ArrayRecord({"x": Array(np.ones(3))}),
                       "config": ConfigRecord({"op": "train", "round": 3}), "metrics": MetricRecord({"loss": 0.5})})


def _same(a: RecordDict, b: RecordDict) -> None:
    assert list(a.keys()) == list(b.keys())
    for key, rec in a.array_records.items():
        assert list(rec.keys()) == list(b[key].keys())
        for name, arr in rec.items():
            other = b[key][name]
            assert (arr.dtype, arr.shape, arr.stype, arr.data) == (other.dtype, other.shape, other.stype, other.data)
    assert payload_bytes(Message(a, dst_node_id=1, message_type=MessageType.TRAIN)) == \
        payload_bytes(Message(b, dst_node_id=1, message_type=MessageType.TRAIN))


def test_pack_then_unpack_gives_the_same_arrays_and_bytes():
    content = _content()
    packed = pack(content)
    assert is_packed(packed) and not is_packed(content)
    assert len(packed["arrays"]) == 1 and len(packed["one"]) == 1 and PREFIX + "one" not in packed  # one array: as is
    _same(content, unpack(packed))


def test_records_shared_by_messages_are_packed_once():
    content, cache = _content(), {}
    first, second = pack(content, cache), pack(RecordDict(dict(content.items())), cache)
    assert first["arrays"] is second["arrays"]


def test_a_garbled_layout_is_an_error():
    packed = pack(_content())
    layout = packed[PREFIX + "arrays"]
    packed[PREFIX + "arrays"] = ConfigRecord({**dict(layout), "sizes": [1, 2, 3]})
    with pytest.raises(ValueError, match="layout names"):
        unpack(packed)


def _blob(whole: RecordDict) -> bytes:
    record = whole[WHOLE]
    return record["packed"].data if isinstance(record, ArrayRecord) else record["packed"]


def _with_blob(whole: RecordDict, blob: bytes) -> RecordDict:
    if isinstance(whole[WHOLE], ArrayRecord):
        whole[WHOLE] = ArrayRecord({"packed": Array(dtype="uint8", shape=(len(blob),), stype=WHOLE, data=blob)})
    else:
        whole[WHOLE] = ConfigRecord({"packed": blob})
    return whole


@pytest.fixture(params=["inline", "chunked"])
def whole_form(request, monkeypatch):
    """Both forms of a whole-packed content: a config record's bytes (up to Flower's array
    chunk size) and, larger, an array that Flower chunks."""
    if request.param == "chunked":
        monkeypatch.setattr(transport_packing, "WHOLE_INLINE_MAX", 16)
    return request.param


def test_a_content_packed_whole_is_one_record_and_comes_back_exactly(whole_form):
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    content = _content()
    whole = pack_whole(content)
    kind = ArrayRecord if whole_form == "chunked" else ConfigRecord
    assert is_packed(whole) and list(whole.keys()) == [WHOLE] and isinstance(whole[WHOLE], kind)
    objects = len(get_all_nested_objects(Message(whole, dst_node_id=1, message_type=MessageType.TRAIN)))
    assert objects == (5 if whole_form == "chunked" else 3)  # requests per message per hop
    assert objects < len(get_all_nested_objects(Message(pack(content), dst_node_id=1, message_type=MessageType.TRAIN)))
    back = unpack(whole)
    _same(content, back)
    assert dict(back["config"]) == dict(content["config"]) and dict(back["metrics"]) == dict(content["metrics"])


@pytest.mark.parametrize("cut", [3, 40, -5])
def test_a_truncated_or_garbled_whole_blob_is_an_error(cut, whole_form):
    whole = pack_whole(_content())
    data = _blob(whole)
    garbled = data[:cut] if cut > 0 else data[:8] + b"{not json" + data[17:]
    with pytest.raises((ValueError, KeyError, TypeError)):
        unpack(_with_blob(whole, garbled))


def test_a_whole_record_that_is_not_bytes_is_an_error():
    with pytest.raises(ValueError, match="not bytes"):
        unpack(RecordDict({WHOLE: ConfigRecord({"packed": "text"})}))


def test_the_servers_messages_pack_whole_unless_that_would_copy_a_shared_record():
    shared = _content()
    same = pack_messages([shared, shared])  # Flower's FedAvg: one content for every client
    assert same[0] is same[1] and list(same[0].keys()) == [WHOLE]
    own = RecordDict({**dict(shared.items()), "config": ConfigRecord({"op": "train", "round": 3, "rank": 2})})
    mixed = pack_messages([shared, own])  # the common state beside each client's own config
    assert all(PREFIX + "arrays" in c for c in mixed) and mixed[0]["arrays"] is mixed[1]["arrays"]  # stored once
    alone = pack_messages([_content(), _content()])  # personal states (heterogeneous ranks): nothing shared
    assert all(list(c.keys()) == [WHOLE] for c in alone)
    for packed, original in zip([*same, *mixed, *alone], [shared, shared, shared, own, _content(), _content()]):
        _same(original, unpack(packed))


def _request(content: RecordDict) -> Message:
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_the_client_mod_unpacks_for_the_handler_and_packs_its_reply_only_when_asked_packed():
    seen = []

    def handler(msg: Message, ctx: Context) -> Message:
        seen.append(is_packed(msg.content))
        return Message(_content(), reply_to=msg)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    plain = packing_mod(_request(_content()), ctx, handler)
    packed = packing_mod(_request(pack(_content())), ctx, handler)
    assert seen == [False, False]
    assert not is_packed(plain.content) and list(packed.content.keys()) == [WHOLE]  # a reply travels whole
    _same(plain.content, unpack(packed.content))


class _PackingGrid(HttpGrid):
    """The deployment's Grid, as far as send_and_receive uses it: nodes answer with their
    request's content (packed, as the ClientApp's mod would), node 2 with a truncated one."""

    def __init__(self):  # no SuperLink: only the two calls below are used
        self.pushed: list[RecordDict] = []
        self.replies: list[Message] = []

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            self.pushed.append(m.content)
            content = RecordDict(dict(m.content.items()))
            if m.metadata.dst_node_id == 2:
                content = _with_blob(content, _blob(content)[:-3])
            self.replies.append(Message(content, reply_to=m))
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        out, self.replies = self.replies, []
        return out


def test_the_server_packs_on_the_deployment_grid_and_rejects_a_garbled_reply():
    from server.loop import send_and_receive

    grid = _PackingGrid()
    shared = _content()
    messages = [Message(shared, dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2)]
    strays: list = []
    replies = send_and_receive(grid, messages, timeout=5.0, strays=strays)
    assert all(list(c.keys()) == [WHOLE] for c in grid.pushed) and grid.pushed[0] is grid.pushed[1]  # stored once
    assert all(m.content is shared for m in messages)  # the callers' messages are left as they were
    assert [r.metadata.src_node_id for r in replies] == [1]
    _same(shared, replies[0].content)
    assert [r.metadata.src_node_id for r, _ in strays] == [2] and "undecodable packed payload" in strays[0][1]
