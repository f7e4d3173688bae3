"""Turn protobuf text-format parse errors into PrototxtErrors a Caffe user can act on.

`text_format.ParseError` says "1:19 : Message type "caffe.LayerParameter" has no field named
"foo"." We re-state that as `net.prototxt:1:19: unknown field "foo" in LayerParameter
(layer "conv1"); did you mean ...?`, list the allowed values of a mistyped enum, and say
"unexpected end of file" (with the block left open) for a truncated file.
"""
from __future__ import annotations

import difflib
import re

from google.protobuf import text_format

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import PrototxtError

_POSITION = re.compile(r"^(\d+):(\d+)\s*:\s*")
# text_format sometimes repeats the offending line in quotes before the reason.
_ECHOED_LINE = re.compile(r"^'.*?':\s+(?=[A-Z])", re.S)
_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_BAD_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\S+?)\.?$')
_BAD_ENUM_NUMBER = re.compile(r'Enum type "([\w.]+)" has no value with number (-?\d+)')


def explain_parse_error(exc: text_format.ParseError, text: str, source: str,
                        root_type: str) -> PrototxtError:
    """Build the PrototxtError for `exc`, raised while parsing `text` (from `source`)."""
    raw = str(exc)
    line, col = exc.GetLine(), exc.GetColumn()
    m = _POSITION.match(raw)
    if m:
        raw = raw[m.end():]
        line, col = int(m.group(1)), int(m.group(2))
    raw = _ECHOED_LINE.sub("", raw).strip()
    offset = _offset(text, line, col)
    scan = _scan(text, offset)
    where = f" (layer {_q(scan.layer_name)})" if scan.layer_name else ""

    whole = _scan(text, len(text))
    if whole.open_blocks and raw.startswith(("Expected", "Unexpected end")):
        # Blocks still open at the end of the text: the file is truncated.
        if whole.open_blocks:
            name, open_line = whole.open_blocks[-1]
            where = f" (layer {_q(whole.layer_name)})" if whole.layer_name else ""
            reason = (f"unexpected end of file, expected '}}' to close '{name} {{' "
                      f"opened at line {open_line}{where}")
        else:
            reason = f"unexpected end of file: {raw}"
        end_line, end_col = _position_of(text, len(text.rstrip()))
        return PrototxtError(reason, source, end_line, end_col)

    m = _UNKNOWN_FIELD.search(raw)
    if m:
        msg_type, field = m.group(1), m.group(2)
        reason = f"unknown field {_q(field)} in {_short(msg_type)}{where}"
        known = _field_names(msg_type)
        close = difflib.get_close_matches(field, known, n=3)
        if close:
            reason += f"; did you mean {' or '.join(map(_q, close))}?"
        if field in _FORK_FIELDS:
            reason += f" ({_FORK_FIELDS[field]})"
        reason += _fork_hint(msg_type)
        return PrototxtError(reason, source, line, col)

    m = _BAD_ENUM.search(raw) or _BAD_ENUM_NUMBER.search(raw)
    if m:
        enum_type, value = m.group(1), m.group(2)
        allowed = _enum_values(enum_type)
        field = scan.last_field or "the field"
        reason = (f"invalid value {value} for {field} ({_short(enum_type)}){where}; "
                  f"allowed values: {', '.join(allowed)}{_fork_hint(enum_type)}")
        return PrototxtError(reason, source, line, col)

    if raw.startswith("Expected"):
        raw = "expected" + raw[len("Expected"):]
    return PrototxtError(f"{raw.rstrip('.')}{where} (while parsing {root_type})", source, line, col)


# Fork fields our schema does not have (the supported forks' fields are in caffe.proto).
_FORK_FIELDS = {
    "sample_weights_test": "Bayesian SegNet's Dropout-at-test switch, not supported",
    "video_data_param": "the SSD fork's VideoData layer, not supported",
    "update_global_stats": "DeepLab v2's BatchNorm field, not supported",
    "scale_factors": "a DeepLab v2 transform_param field, not supported",
    "pre_fixed_normalizer": "R-FCN's loss normalization, not supported",
    "scale_bias": "NVIDIA Caffe's BatchNorm field; use a Scale layer with bias_term",
    **{f"{name}_param": "a DeepLab v2 layer field; of DeepLab's layers hovcaffe has Interp"
       for name in ("domain_transform", "adaptive_bias_channel", "bias_channel", "unique_label",
                    "mat_read", "mat_write", "dense_crf", "seg_accuracy")},
}

# Fork parameter messages: what reads them and the fork that defined them.
_FORK_PARAMS = {
    "ShuffleChannelParameter": ("ShuffleChannel", "the ShuffleNet fork"),
    "ReLU6Parameter": ("ReLU6", "the MobileNet v2 ReLU6 ports"),
    "BNParameter": ("BN", "the SegNet fork"),
    "UpsampleParameter": ("Upsample", "the SegNet fork"),
    "DenseImageDataParameter": ("DenseImageData", "the SegNet fork"),
    "InterpParameter": ("Interp", "the DeepLab v2 fork"),
    "ROIPoolingParameter": ("ROIPooling", "the py-faster-rcnn fork"),
    "SmoothL1LossParameter": ("SmoothL1Loss", "the py-faster-rcnn fork"),
    "PSROIPoolingParameter": ("PSROIPooling", "the R-FCN fork"),
    "ProposalParameter": ("Proposal", "OpenCV's reading of py-faster-rcnn"),
    "NormalizeParameter": ("Normalize", "the SSD fork"),
    "PermuteParameter": ("Permute", "the SSD fork"),
    "PriorBoxParameter": ("PriorBox", "the SSD fork"),
    "DetectionOutputParameter": ("DetectionOutput", "the SSD fork"),
    "NonMaximumSuppressionParameter": ("DetectionOutput and MultiBoxLoss layers", "the SSD fork"),
    "MultiBoxLossParameter": ("MultiBoxLoss", "the SSD fork"),
    "DetectionEvaluateParameter": ("DetectionEvaluate", "the SSD fork"),
    "AnnotatedDataParameter": ("AnnotatedData", "the SSD fork"),
    **{name: ("the transform_param of SSD's data layers", "the SSD fork")
       for name in ("ResizeParameter", "NoiseParameter", "DistortionParameter",
                    "ExpansionParameter", "EmitConstraint", "BatchSampler", "Sampler",
                    "SampleConstraint")},
}
# A bare type name T reads "T layers".
_FORK_MESSAGES = {name: (user if " " in user else f"{user} layers", fork)
                  for name, (user, fork) in _FORK_PARAMS.items()}


def _fork_hint(msg_type: str) -> str:
    """' (X of LayerType layers, from fork; its fields: ...)' for a fork's message, else ''."""
    name = _short(msg_type).split(".")[0]
    if name not in _FORK_MESSAGES:
        return ""
    users, fork = _FORK_MESSAGES[name]
    fields = ", ".join(_field_names(f"caffe.{name}"))
    return f" ({name} belongs to {users}, from {fork}; its fields: {fields})"


def _q(text: str | None) -> str:
    return f'"{text}"'


def _short(full_name: str) -> str:
    return full_name.split(".", 1)[1] if full_name.startswith("caffe.") else full_name


def _field_names(full_name: str) -> list[str]:
    try:
        desc = caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
    except KeyError:
        return []
    return [f.name for f in desc.fields]


def _enum_values(full_name: str) -> list[str]:
    try:
        desc = caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(full_name)
    except KeyError:
        return []
    return [v.name for v in desc.values]


def _offset(text: str, line: int, col: int) -> int:
    """Character offset of 1-based `line`, `col` (text_format's columns are 1-based)."""
    lines = text.splitlines(keepends=True)
    if line <= 0 or line > len(lines):
        return len(text)
    return sum(len(s) for s in lines[: line - 1]) + max(col - 1, 0)


def _position_of(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


class _Scan:
    """What surrounds an offset: open blocks, the enclosing layer's name, the last field."""

    def __init__(self) -> None:
        self.open_blocks: list[tuple[str, int]] = []
        self.layer_name: str | None = None
        self.last_field: str | None = None


_TOKEN = re.compile(r"""\s+|\#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[{}<>:;,\[\]]|[^\s{}<>:;,\[\]"'#]+""")


def _scan(text: str, offset: int) -> _Scan:
    """Walk the tokens before `offset`, tracking blocks and the current top-level layer."""
    out = _Scan()
    stack: list[tuple[str, int]] = []
    layer_name: str | None = None
    prev_ident: str | None = None
    expect_name_value = False
    for m in _TOKEN.finditer(text):
        if m.start() >= offset:
            break
        tok = m.group(0)
        if tok.isspace() or tok.startswith("#"):
            continue
        if tok in ("{", "<"):
            name = prev_ident or "?"
            stack.append((name, text.count("\n", 0, m.start()) + 1))
            if len(stack) == 1 and name in ("layer", "layers"):
                layer_name = None
            prev_ident = None
        elif tok in ("}", ">"):
            if stack:
                stack.pop()
            prev_ident = None
        elif tok == ":":
            # A layer's own name: depth 1 in `layer {`, or depth 2 in a V0 `layers { layer {`.
            expect_name_value = prev_ident == "name" and (
                (len(stack) == 1 and stack[0][0] in ("layer", "layers"))
                or (len(stack) == 2 and stack[0][0] == "layers" and stack[1][0] == "layer"))
            if prev_ident:
                out.last_field = prev_ident
        elif expect_name_value:
            layer_name = tok.strip("\"'")
            expect_name_value = False
            prev_ident = None
        else:
            prev_ident = tok
    out.open_blocks = stack
    out.layer_name = layer_name if stack and stack[0][0] in ("layer", "layers") else None
    return out
