"""Read binary models written by the yahoo/caffe fork (CaffeOnSpark).

That fork stored LayerParameter.source_class (a string such as "com.yahoo.ml.caffe.LMDB")
on field 141, the number BVLC later gave to `bias_param`. A caffemodel saved by
CaffeOnSpark therefore carries, for its data layers, a string where our schema expects a
BiasParameter message, and fails to parse. `strip_yahoo_source_class` rewrites the wire
bytes without those string fields (they only name a JVM class, nothing numeric).
"""
from __future__ import annotations

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.wire import LEN, fields, len_field

_LAYER_FIELD = 100      # NetParameter.layer
_YAHOO_SOURCE_CLASS = 141


def _is_bias_param(payload: bytes) -> bool:
    try:
        caffe_pb2.BiasParameter().ParseFromString(payload)
        return True
    except Exception:  # noqa: BLE001 - any decode failure means "not a BiasParameter"
        return False


def strip_yahoo_source_class(data: bytes) -> bytes | None:
    """`data` without yahoo-style string field 141 in its layers, or None if nothing changed."""
    try:
        out = bytearray()
        changed = False
        for number, wire, start, payload, end in fields(data):
            if number != _LAYER_FIELD or wire != LEN:
                out += data[start:end]
                continue
            layer = data[payload:end]
            kept = bytearray()
            for n, w, s, p, e in fields(layer):
                if n == _YAHOO_SOURCE_CLASS and w == LEN and not _is_bias_param(layer[p:e]):
                    changed = True
                    continue
                kept += layer[s:e]
            out += len_field(_LAYER_FIELD, bytes(kept))
        return bytes(out) if changed else None
    except ValueError:
        return None
