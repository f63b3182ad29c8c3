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

A content travels as one blob where nothing is lost by it (:func:`pack_whole`): its
array records' bytes and its config and metric records (Flower's own serialization of
each) back to back after a JSON header. A blob up to Flower's array chunk size (5 MiB,
the largest single object Flower would send anyway) is the one bytes value of a config
record, which has no child objects: a message is then 3 objects (message, record dict,
record) on each hop instead of 8 or more; a larger blob is one array, which Flower
chunks as usual (message, record dict, record, array, its chunks). Replies always do; of the
server's messages (:func:`pack_messages`), those that share their whole content (Flower's
FedAvg gives every client the same one) pack to the same array, which the SuperLink
stores once; a message that shares only an array record with others (its own config
beside the common global state) keeps its records apart, so that record is still pushed
and stored once.
"""

from __future__ import annotations

import json
from typing import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

PREFIX = "anther.packed."  # config record key prefix; the packed array record keeps its own name
STYPE = "anther.packed"
WHOLE = "anther.whole"  # the one record (and, as an array, its stype) of a content packed whole
WHOLE_INLINE_MAX = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE  # larger blobs travel as a chunked array
HEADER_BYTES = 8  # big-endian length of the JSON header that starts a whole-packed blob


def is_packed(content: RecordDict) -> bool:
    return WHOLE in content or any(k.startswith(PREFIX) for k in content.config_records)


def _rows(record: ArrayRecord) -> list[tuple[str, str, str, tuple[int, ...], int]]:
    """Each array's (name, dtype, storage type, shape, byte size), in the record's order."""
    return [(name, a.dtype, a.stype, tuple(a.shape), len(a.data)) for name, a in record.items()]


def _read_arrays(data: bytes, rows, at: int) -> tuple[ArrayRecord, int]:
    """The arrays ``rows`` name, read back to back from ``data[at:]``; and where they end."""
    out = {}
    for name, dtype, stype, shape, size in rows:
        out[name] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data[at:at + size])
        at += size
    return ArrayRecord(out), at


def _pack_record(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    names, dtypes, stypes, shapes, sizes = zip(*_rows(record))
    layout = ConfigRecord({"names": list(names), "dtypes": list(dtypes), "stypes": list(stypes),
                           "shapes": [",".join(map(str, s)) for s in shapes], "sizes": list(sizes)})
    data = b"".join(a.data for a in record.values())
    return ArrayRecord({"packed": Array(dtype="uint8", shape=(len(data),), stype=STYPE, data=data)}), layout


def _unpack_record(record: ArrayRecord, layout: ConfigRecord) -> ArrayRecord:
    data = record["packed"].data
    shapes = [tuple(int(d) for d in s.split(",")) if s else () for s in layout["shapes"]]
    rows = zip(layout["names"], layout["dtypes"], layout["stypes"], shapes, layout["sizes"], strict=True)
    out, at = _read_arrays(data, rows, 0)
    if at != len(data):
        raise ValueError(f"packed array record: {len(data)} bytes, its layout names {at}")
    return out


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


def pack_whole(content: RecordDict) -> RecordDict:
    """``content`` as one array: a JSON header (each record's key, kind and size; each
    array's name, dtype, storage type, shape and size) then the records' bytes."""
    header, parts = [], []
    for key, value in content.items():
        if isinstance(value, ArrayRecord):
            header.append({"key": key, "kind": "array", "arrays": _rows(value)})
            parts += [a.data for a in value.values()]
        else:
            data = value.deflate()
            header.append({"key": key, "kind": "config" if isinstance(value, ConfigRecord) else "metric",
                           "size": len(data)})
            parts.append(data)
    head = json.dumps(header).encode()
    blob = b"".join([len(head).to_bytes(HEADER_BYTES, "big"), head, *parts])
    if len(blob) <= WHOLE_INLINE_MAX:
        return RecordDict({WHOLE: ConfigRecord({"packed": blob})})
    return RecordDict({WHOLE: ArrayRecord({"packed": Array(dtype="uint8", shape=(len(blob),), stype=WHOLE, data=blob)})})


def pack_messages(contents: list[RecordDict]) -> list[RecordDict]:
    """The server's contents of one push, packed: whole where no array record is shared
    with a different content, record by record (shared packing) where one is."""
    owners: dict[int, set[int]] = {}
    for content in contents:
        for record in content.array_records.values():
            owners.setdefault(id(record), set()).add(id(content))
    cache: dict = {}
    wholes: dict[int, RecordDict] = {}
    out = []
    for content in contents:
        if any(len(owners[id(r)]) > 1 for r in content.array_records.values()):
            out.append(pack(content, cache))
            continue
        if id(content) not in wholes:
            wholes[id(content)] = pack_whole(content)
        out.append(wholes[id(content)])
    return out


def _unpack_whole(record: ArrayRecord | ConfigRecord) -> RecordDict:
    blob = record["packed"].data if isinstance(record, ArrayRecord) else record["packed"]
    if not isinstance(blob, bytes):
        raise ValueError(f"whole-packed content: a {type(blob).__name__}, not bytes")
    size = int.from_bytes(blob[:HEADER_BYTES], "big")
    at = HEADER_BYTES + size
    if at > len(blob):
        raise ValueError(f"whole-packed content: a {size}-byte header in {len(blob)} bytes")
    items = {}
    for entry in json.loads(blob[HEADER_BYTES:at]):
        if entry["kind"] == "array":
            items[entry["key"]], at = _read_arrays(blob, entry["arrays"], at)
        else:
            kind = {"config": ConfigRecord, "metric": MetricRecord}[entry["kind"]]
            try:
                items[entry["key"]] = kind.inflate(blob[at:at + entry["size"]])
            except Exception as err:  # protobuf's DecodeError, Flower's head checks
                raise ValueError(f"whole-packed content: record {entry['key']!r}: {type(err).__name__}: {err}") from err
            at += entry["size"]
    if at != len(blob):
        raise ValueError(f"whole-packed content: {len(blob)} bytes, its header names {at}")
    return RecordDict(items)


def unpack(content: RecordDict) -> RecordDict:
    """``content`` with its packed array records restored (a new RecordDict); a content
    packed whole (:func:`pack_whole`) is restored record by record."""
    if WHOLE in content:
        return _unpack_whole(content[WHOLE])
    layouts = {k[len(PREFIX):]: v for k, v in content.config_records.items() if k.startswith(PREFIX)}
    items = {}
    for key, value in content.items():
        if key.startswith(PREFIX):
            continue
        items[key] = _unpack_record(value, layouts[key]) if key in layouts else value
    return RecordDict(items)


def packing_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: a packed request is unpacked for the handler, and its reply packed whole."""
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    msg.content = unpack(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack_whole(reply.content)
    return reply
