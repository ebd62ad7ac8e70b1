#!/usr/bin/env python3
"""Writes the binary fuzz seeds that tests/fixtures has no file for, derived from its OTLP/JSON
fixtures: OTLP protobuf requests (target otlp_wire) and write-ahead log segments (targets wal
and wal_recover).

usage: seed.py FIXTURES_DIR CORPUS_DIR

Protobuf is encoded by hand from the JSON (field numbers of opentelemetry-proto's trace/v1,
common/v1 and resource/v1). A segment follows collector/src/wal/format.rs: records
`[u32 len | kind bit][u32 crc32(payload)][u64 seq][payload]`, all little-endian, the payload
either a postcard `Vec<Span>` (kind bit clear; serde's layout of meshtrace_model::Span) or an
OTLP request (kind bit set). Only the standard library is used.
"""

import base64
import binascii
import json
import pathlib
import struct
import sys
import zlib

OTLP_PAYLOAD = 1 << 31


# --- protobuf -------------------------------------------------------------------------------

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint((field << 3) | wire)


def pb_len(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def pb_str(field, s):
    return pb_len(field, s.encode()) if s else b""


def pb_varint(field, n):
    return key(field, 0) + varint(n) if n else b""


def pb_fixed64(field, n):
    return key(field, 1) + struct.pack("<Q", n) if n else b""


def ident(text):
    """An ID as the collector reads it: hex when it is hex, else base64."""
    if not text:
        return b""
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return base64.b64decode(text)


def pb_any(v):
    if not v:
        return b""
    if "stringValue" in v:
        return pb_str(1, v["stringValue"]) or pb_len(1, b"")
    if "boolValue" in v:
        return key(2, 0) + varint(1 if v["boolValue"] else 0)
    if "intValue" in v:
        return key(3, 0) + varint(int(v["intValue"]))
    if "doubleValue" in v:
        return key(4, 1) + struct.pack("<d", float(v["doubleValue"]))
    if "arrayValue" in v:
        values = v["arrayValue"].get("values") or []
        return pb_len(5, b"".join(pb_len(1, pb_any(x)) for x in values))
    if "kvlistValue" in v:
        values = v["kvlistValue"].get("values") or []
        return pb_len(6, b"".join(pb_len(1, pb_kv(x)) for x in values))
    if "bytesValue" in v:
        return pb_len(7, base64.b64decode(v["bytesValue"]))
    return b""


def pb_kv(kv):
    return pb_str(1, kv.get("key", "")) + pb_len(2, pb_any(kv.get("value")))


def pb_attrs(field, attrs):
    return b"".join(pb_len(field, pb_kv(kv)) for kv in attrs or [])


KINDS = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]


def kind_number(k):
    if isinstance(k, int):
        return k
    if isinstance(k, str):
        name = k.upper().removeprefix("SPAN_KIND_")
        return KINDS.index(name) if name in KINDS else 0
    return 0


STATUS = {"UNSET": 0, "OK": 1, "ERROR": 2}


def status_number(c):
    if isinstance(c, int):
        return c
    if isinstance(c, str):
        return STATUS.get(c.upper().removeprefix("STATUS_CODE_"), 0)
    return 0


def pb_span(s):
    out = pb_len(1, ident(s.get("traceId", ""))) + pb_len(2, ident(s.get("spanId", "")))
    out += pb_str(3, s.get("traceState", ""))
    if s.get("parentSpanId"):
        out += pb_len(4, ident(s["parentSpanId"]))
    out += pb_str(5, s.get("name", ""))
    out += pb_varint(6, kind_number(s.get("kind", 0)))
    out += pb_fixed64(7, int(s.get("startTimeUnixNano") or 0))
    out += pb_fixed64(8, int(s.get("endTimeUnixNano") or 0))
    out += pb_attrs(9, s.get("attributes"))
    for e in s.get("events") or []:
        ev = pb_fixed64(1, int(e.get("timeUnixNano") or 0)) + pb_str(2, e.get("name", ""))
        out += pb_len(11, ev + pb_attrs(3, e.get("attributes")))
    for link in s.get("links") or []:
        ln = pb_len(1, ident(link.get("traceId", ""))) + pb_len(2, ident(link.get("spanId", "")))
        ln += pb_str(3, link.get("traceState", "")) + pb_attrs(4, link.get("attributes"))
        out += pb_len(13, ln)
    st = s.get("status") or {}
    if st:
        out += pb_len(15, pb_str(2, st.get("message", "")) + pb_varint(3, status_number(st.get("code"))))
    return out


def pb_request(doc):
    """An ExportTraceServiceRequest from an OTLP/JSON document (also Tempo's `batches`)."""
    doc = doc.get("result", doc)
    out = b""
    for rs in doc.get("resourceSpans") or doc.get("batches") or []:
        body = b""
        res = rs.get("resource")
        if res is not None:
            body += pb_len(1, pb_attrs(1, res.get("attributes")))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            sc = ss.get("scope") or ss.get("instrumentationLibrary")
            inner = b""
            if sc is not None:
                inner += pb_len(1, pb_str(1, sc.get("name", "")) + pb_str(2, sc.get("version", ""))
                                + pb_attrs(3, sc.get("attributes")))
            for sp in ss.get("spans") or []:
                inner += pb_len(2, pb_span(sp))
            body += pb_len(2, inner)
        out += pb_len(1, body)
    return out


# --- postcard (serde's data model for meshtrace_model::Span) --------------------------------

def pc_varint(n):
    return varint(n)


def pc_i64(n):
    return varint((n << 1) ^ (n >> 63))


def pc_str(s):
    b = s.encode()
    return varint(len(b)) + b


def pc_value(v):
    """An AttrValue: Str, Bool, Int, Double, Bytes, Array, KvList (variant indices 0-6)."""
    v = v or {}
    if "boolValue" in v:
        return varint(1) + bytes([1 if v["boolValue"] else 0])
    if "intValue" in v:
        return varint(2) + pc_i64(int(v["intValue"]))
    if "doubleValue" in v:
        return varint(3) + struct.pack("<d", float(v["doubleValue"]))
    if "bytesValue" in v:
        b = base64.b64decode(v["bytesValue"])
        return varint(4) + varint(len(b)) + b
    if "arrayValue" in v:
        values = v["arrayValue"].get("values") or []
        return varint(5) + varint(len(values)) + b"".join(pc_value(x) for x in values)
    if "kvlistValue" in v:
        return varint(6) + pc_attrs(v["kvlistValue"].get("values"))
    return varint(0) + pc_str(v.get("stringValue", ""))


def pc_attrs(attrs):
    attrs = attrs or []
    return varint(len(attrs)) + b"".join(pc_str(kv.get("key", "")) + pc_value(kv.get("value")) for kv in attrs)


def fixed_id(text, n):
    b = ident(text)
    return b if len(b) == n else (b"\x01" * n)


def pc_span(s, service, resource_attrs, scope):
    start = int(s.get("startTimeUnixNano") or 0)
    end = int(s.get("endTimeUnixNano") or 0)
    out = fixed_id(s.get("traceId", ""), 16) + fixed_id(s.get("spanId", ""), 8)
    parent = ident(s.get("parentSpanId", ""))
    out += (b"\x01" + parent) if len(parent) == 8 else b"\x00"
    out += pc_str(s.get("traceState", "")) + pc_str(s.get("name", ""))
    out += varint(kind_number(s.get("kind", 0)))
    out += pc_i64(start) + pc_i64(end - start)
    st = s.get("status") or {}
    out += varint(status_number(st.get("code"))) + pc_str(st.get("message", ""))
    out += pc_str(service) + pc_attrs(resource_attrs)
    out += pc_str(scope.get("name", "")) + pc_str(scope.get("version", "")) + pc_attrs(scope.get("attributes"))
    out += pc_attrs(s.get("attributes"))
    events = s.get("events") or []
    out += varint(len(events))
    for e in events:
        out += pc_i64(int(e.get("timeUnixNano") or 0)) + pc_str(e.get("name", "")) + pc_attrs(e.get("attributes"))
    links = s.get("links") or []
    out += varint(len(links))
    for link in links:
        out += fixed_id(link.get("traceId", ""), 16) + fixed_id(link.get("spanId", ""), 8)
        out += pc_str(link.get("traceState", "")) + pc_attrs(link.get("attributes"))
    return out


def pc_spans(doc):
    """A postcard Vec<Span> of the document's spans (the model's flattened form)."""
    doc = doc.get("result", doc)
    spans = []
    for rs in doc.get("resourceSpans") or doc.get("batches") or []:
        attrs = list((rs.get("resource") or {}).get("attributes") or [])
        service = ""
        for i, kv in enumerate(attrs):
            if kv.get("key") == "service.name":
                service = (kv.get("value") or {}).get("stringValue", "")
                del attrs[i]
                break
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
            for sp in ss.get("spans") or []:
                spans.append(pc_span(sp, service or "unknown_service", attrs, scope))
    return varint(len(spans)) + b"".join(spans)


# --- write-ahead log ------------------------------------------------------------------------

def record(seq, payload, otlp=False):
    word = len(payload) | (OTLP_PAYLOAD if otlp else 0)
    crc = zlib.crc32(payload) & 0xFFFFFFFF
    return struct.pack("<IIQ", word, crc, seq) + payload


def main():
    fixtures, corpus = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    docs = [fixtures / "otlp" / "trace.json"]
    docs += sorted((fixtures / "istio").glob("*.json"))
    docs += sorted((fixtures / "jaeger-storage-suite" / "traces").glob("*.json"))
    wire = corpus / "otlp_wire"
    wire.mkdir(parents=True, exist_ok=True)
    segments = {}
    requests, postcards = [], []
    for path in docs:
        doc = json.loads(path.read_text())
        req = pb_request(doc)
        (wire / f"{path.parent.name}-{path.stem}.pb").write_bytes(req)
        requests.append(req)
        postcards.append(pc_spans(doc))
    # One segment per fixture holding both record kinds, then a few shaped ones.
    for i, (req, spans) in enumerate(zip(requests, postcards)):
        if len(req) and spans != b"\x00":
            seg = record(1, spans) + record(2, req, otlp=True)
            segments[f"segment-{i:02}.log"] = seg
    a, b, c = postcards[0], requests[0], postcards[1]
    good = record(1, a) + record(2, b, otlp=True) + record(3, c)
    segments["three-records.log"] = good
    torn = good + record(4, a)[:-3]
    segments["torn-tail.log"] = torn
    middle = bytearray(good)
    middle[len(record(1, a)) + 20] ^= 0x55  # inside record 2's payload: a gap, then record 3
    segments["damaged-middle.log"] = bytes(middle)
    segments["zeroed-tail.log"] = good + bytes(64)
    segments["out-of-order.log"] = record(2, a) + record(2, c)
    for target in ("wal", "wal_recover"):
        (corpus / target).mkdir(parents=True, exist_ok=True)
        for name, seg in segments.items():
            (corpus / target / name).write_bytes(seg)


if __name__ == "__main__":
    main()
