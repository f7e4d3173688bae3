"""Read binary models written by Caffe forks whose field numbers clash with ours.

Text prototxts name their fields, so a fork's field parses wherever our schema numbers it.
Binary files (.caffemodel) carry numbers only, and some forks gave a LayerParameter field a
number that BVLC (or our CaffeOnSpark extension) uses for something else:

| fork                       | layer type     | field (fork's number -> ours)  | the number's owner |
|----------------------------|----------------|--------------------------------|--------------------|
| yahoo/caffe (CaffeOnSpark) | data layers    | source_class (141 -> 10001)    | bias_param (BVLC)  |
| SegNet (caffe-segnet)      | Upsample       | upsample_param (137 -> 10137)  | embed_param (BVLC) |
| ENet (caffe-segnet-cudnn5) | Upsample       | upsample_param (147 -> 10137)  | swish_param (BVLC) |
| SegNet (caffe-segnet)      | DenseImageData | dense_image_data_param (138 -> 10138) | tile_param (BVLC) |
| ENet (caffe-segnet-cudnn5) | DenseImageData | dense_image_data_param (46 -> 10138)  | (free; one name)  |
| R-FCN (caffe-rfcn)         | PSROIPooling   | psroi_pooling_param (10001 -> 20001)  | source_class      |

A fork's message on a clashing number may even parse as the wrong message without error,
so the moves are made by layer type, before parsing: a layer whose `type` is one of the
table's moves its field to our number. The yahoo case is decided by content instead (its
layers are ordinary data layers): a field-141 string that is not a BiasParameter is dropped,
and only when the plain parse fails, since it names a JVM class and nothing numeric.

Clashes outside LayerParameter need no rewriting, because a caffemodel's layer settings
are not used to build a net (the prototxt is): PoolingParameter 13 is BVLC's round_mode
(the ceil_mode fork's 13 has the opposite sense of 0), SolverParameter 41/42 are BVLC's
layer_wise_reduce/weights (SSD's eval_type/ap_version), LossParameter 3 is BVLC's
normalization (SegNet's weight_by_label_freqs).
"""
from __future__ import annotations

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.wire import LEN, fields, len_field

_LAYER_FIELD = 100      # NetParameter.layer
_LAYER_TYPE = 2         # LayerParameter.type
_YAHOO_SOURCE_CLASS = 141

_LP = caffe_pb2.LayerParameter
# layer type -> (the forks' field numbers, our field number)
FORK_FIELD_MOVES: dict[str, tuple[tuple[int, ...], int]] = {
    "Upsample": ((137, 147), _LP.UPSAMPLE_PARAM_FIELD_NUMBER),
    "DenseImageData": ((138, 46), _LP.DENSE_IMAGE_DATA_PARAM_FIELD_NUMBER),
    "PSROIPooling": ((10001,), _LP.PSROI_POOLING_PARAM_FIELD_NUMBER),
}


def _layer_type(layer: memoryview) -> str | None:
    for number, wire, _start, payload, end in fields(layer):
        if number == _LAYER_TYPE and wire == LEN:
            return bytes(layer[payload:end]).decode("utf-8", "replace")
    return None


def _moved_layer(layer: memoryview) -> bytes | None:
    """`layer` with its fork field renumbered, or None if it has none to move."""
    move = FORK_FIELD_MOVES.get(_layer_type(layer) or "")
    if move is None:
        return None
    fork_numbers, our_number = move
    out = bytearray()
    changed = False
    for number, wire, start, payload, end in fields(layer):
        if number in fork_numbers and wire == LEN:
            out += len_field(our_number, bytes(layer[payload:end]))
            changed = True
        else:
            out += layer[start:end]
    return bytes(out) if changed else None


def move_fork_fields(data: bytes) -> bytes | None:
    """`data` with the table's fork fields moved to our numbers, or None if it has none."""
    view = memoryview(data)
    try:
        layers = [(start, end, _moved_layer(view[payload:end]))
                  for number, wire, start, payload, end in fields(view)
                  if number == _LAYER_FIELD and wire == LEN]
    except (ValueError, IndexError):
        return None     # not a well-formed message: leave the error to the real parser
    if not any(moved is not None for _s, _e, moved in layers):
        return None
    out = bytearray()
    pos = 0
    for start, end, moved in layers:
        if moved is None:
            continue
        out += view[pos:start]
        out += len_field(_LAYER_FIELD, moved)
        pos = end
    out += view[pos:]
    return bytes(out)


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
