"""One object per array record on the deployment's wire.

Flower 1.42 sends a message as a tree of objects, each its own HTTPS request on each hop
(ServerApp -> SuperLink -> SuperNode -> ClientApp and back): a LoRA state of 26 tensors is
about 30 requests per message per hop, most of a deployed round's time on a small model
(docs/results.md, deployment second slice). :func:`pack` joins the arrays of each of a
message's array records into one array (their serialized ``data`` back to back) and keeps
their names, dtypes, shapes and storage types in a config record; :func:`unpack` restores
the exact :class:`Array` objects, so the payload a strategy or a handler sees, and the
bytes the server counts (measured before packing and after unpacking), are the same as in
simulation. The server packs only on the deployment's Grid; the ClientApp's
:func:`packing_mod` unpacks what arrives packed and packs its reply then, so a simulated or
an unpacked request is answered exactly as before. Flower only: imported by the ClientApp
front.
"""

from __future__ import annotations

from typing import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

PREFIX = "anther.packed."  # config record key prefix; the packed array record keeps its own name
STYPE = "anther.packed"


def is_packed(content: RecordDict) -> bool:
    return any(k.startswith(PREFIX) for k in content.config_records)


def _pack_record(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    names = list(record.keys())
    arrays = [record[n] for n in names]
    layout = ConfigRecord({"names": names, "dtypes": [a.dtype for a in arrays], "stypes": [a.stype for a in arrays],
                           "shapes": [",".join(map(str, a.shape)) for a in arrays],
                           "sizes": [len(a.data) for a in arrays]})
    data = b"".join(a.data for a in arrays)
    return ArrayRecord({"packed": Array(dtype="uint8", shape=(len(data),), stype=STYPE, data=data)}), layout


def _unpack_record(record: ArrayRecord, layout: ConfigRecord) -> ArrayRecord:
    data = record["packed"].data
    out, at = {}, 0
    for name, dtype, stype, shape, size in zip(layout["names"], layout["dtypes"], layout["stypes"], layout["shapes"],
                                               layout["sizes"], strict=True):
        dims = tuple(int(d) for d in shape.split(",")) if shape else ()
        out[name] = Array(dtype=dtype, shape=dims, stype=stype, data=data[at:at + size])
        at += size
    if at != len(data):
        raise ValueError(f"packed array record: {len(data)} bytes, its layout names {at}")
    return ArrayRecord(out)


def pack(content: RecordDict, cache: dict[int, tuple[ArrayRecord, ConfigRecord]] | None = None) -> RecordDict:
    """``content`` with each non-empty array record packed (a new RecordDict; ``content``
    is not changed). ``cache`` shares the packing of a record among messages that share it."""
    items = {}
    for key, value in content.items():
        if isinstance(value, ArrayRecord) and len(value) > 1:
            if cache is not None and id(value) in cache:
                packed, layout = cache[id(value)]
            else:
                packed, layout = _pack_record(value)
                if cache is not None:
                    cache[id(value)] = (packed, layout)
            items[key], items[PREFIX + key] = packed, layout
        else:
            items[key] = value
    return RecordDict(items)


def unpack(content: RecordDict) -> RecordDict:
    """``content`` with its packed array records restored (a new RecordDict)."""
    layouts = {k[len(PREFIX):]: v for k, v in content.config_records.items() if k.startswith(PREFIX)}
    items = {}
    for key, value in content.items():
        if key.startswith(PREFIX):
            continue
        items[key] = _unpack_record(value, layouts[key]) if key in layouts else value
    return RecordDict(items)


def packing_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: a packed request is unpacked for the handler, and its reply packed."""
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    msg.content = unpack(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack(reply.content)
    return reply
