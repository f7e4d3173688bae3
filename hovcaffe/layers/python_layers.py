"""Well-known Caffe Python layers that hovcaffe runs as built-in layers, without importing them.

A `type: "Python"` layer names code (`python_param.module` + `.layer`) that hovcaffe never
imports unless the user passes allow_python_layers. The layers below come from public repos
whose nets people still run; each maps to a built-in type that reads the same settings
(`python_param.param_str`). Everything else stays refused (caffe/check.py, net.py and the
registry's REFUSED entry read this table).
"""
from __future__ import annotations

# "module.Layer" -> the built-in Caffe type that replaces it.
BUILTIN_PYTHON_LAYERS: dict[str, str] = {
    # py-faster-rcnn (rbgirshick), lib/rpn/proposal_layer.py: RPN proposals, TRAIN and TEST cfg.
    "rpn.proposal_layer.ProposalLayer": "Proposal",
}

# Well-known Python layers that are not built in yet, with what they do (for the refusal).
KNOWN_UNMAPPED: dict[str, str] = {
    "rpn.anchor_target_layer.AnchorTargetLayer": "py-faster-rcnn's RPN training targets",
    "rpn.proposal_target_layer.ProposalTargetLayer": "py-faster-rcnn's detector training targets",
    "roi_data_layer.layer.RoIDataLayer": "py-faster-rcnn's training data reader (roidb)",
}


def python_layer_name(python_param) -> str:
    """`module.Layer` of a PythonParameter."""
    return f"{python_param.module}.{python_param.layer}"


def builtin_type(python_param) -> str | None:
    """The built-in type replacing this Python layer, or None when it stays refused."""
    return BUILTIN_PYTHON_LAYERS.get(python_layer_name(python_param))


def refusal_hint(python_param) -> str:
    """What to tell a user whose Python layer is refused (names the mapped ones)."""
    name = python_layer_name(python_param)
    mapped = ", ".join(sorted(BUILTIN_PYTHON_LAYERS))
    if name in KNOWN_UNMAPPED:
        return (f"{name} ({KNOWN_UNMAPPED[name]}) has no built-in replacement yet; built in: "
                f"{mapped}")
    return f"Python layers built in without importing them: {mapped}"
