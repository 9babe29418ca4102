"""onnxruntime's failures in a line a user can act on: the node that failed and why.

onnxruntime's message for a provider that cannot load a graph starts with C++ frames (the
OpenVINO provider's first line is a source path and a template signature 500 characters
long) and names the node and the reason lines further down, among OpenVINO's internal checks
(``Check '...' failed at src/...hpp:65``) and its own renamed nodes. :func:`describe_ort_error`
finds every ONNX node the message names and the reason given for it; the full message stays
on the exception's cause.
"""

from __future__ import annotations

import re

# OpenVINO's ONNX front end: "While validating ONNX node '<Node(Gemm): node_Gemm_113>': ..."
_OV_NODE = re.compile(r"While validating ONNX node '<Node\((?P<op>[^)]*)\): (?P<name>[^>]*)>':?")
# onnxruntime itself, at load: "Node (node_add) Op (Add) [ShapeInferenceError] ..."
_ORT_NODE = re.compile(r"Node \((?P<name>[^)]*)\) Op \((?P<op>[^)]*)\)\s*(?P<reason>.*)")
# ... and at run time: "Non-zero status code returned while running Gemm node. Name:'x' Status Message: ..."
_ORT_RUN = re.compile(r"running (?P<op>\w+) node\. Name:'(?P<name>[^']*)' Status Message: (?P<reason>.*)")
# OpenVINO's internal assertions and renamed nodes: where, not why
_NOISE = (re.compile(r"Check '.*?' failed at \S+?:\d+:?"),
          re.compile(r"While validating node '[^']*' with friendly_name '[^']*':?"),
          re.compile(r"\x1b\[[0-9;]*m"))
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
MAX_NODES = 5
MAX_REASON = 400


def describe_ort_error(exc: BaseException) -> str:
    """The nodes an onnxruntime exception names and the reason given for each, in one line.

    Args:
        exc: an exception raised by onnxruntime (session creation or a run).

    Returns:
        ``"node 'name' (OpType): reason; node ..."`` for at most :data:`MAX_NODES` nodes
        (then how many more), or, where the message names no node, the message itself without
        onnxruntime's code prefix and C++ frames, on one line.
    """
    text = str(exc).strip()
    found = _openvino_nodes(text) or _ort_nodes(text)
    if found:
        parts = [f"node {name!r} ({op}): {reason or 'no reason given'}" for name, op, reason in found[:MAX_NODES]]
        more = len(found) - MAX_NODES
        return "; ".join(parts) + (f"; and {more} more node{'s' if more > 1 else ''}" if more > 0 else "")
    lines = [_clean(line) for line in text.splitlines()]
    lines = [line for line in lines if line and not _is_frame(line)]
    return _cap(_PREFIX.sub("", " / ".join(lines))) or type(exc).__name__


def _openvino_nodes(text: str) -> list[tuple[str, str, str]]:
    """(name, op, reason) of each node OpenVINO's front end names, in order, once each."""
    matches = list(_OV_NODE.finditer(text))
    found: dict[str, tuple[str, str, str]] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        reason = " ".join(_clean(line) for line in text[m.end():end].splitlines())
        # onnxruntime logs the same message again after it: one copy is enough
        reason = reason.split("\x1b[")[0].split("[E:onnxruntime")[0]
        found.setdefault(m["name"], (m["name"], m["op"], _cap(" ".join(reason.split()))))
    return list(found.values())


def _ort_nodes(text: str) -> list[tuple[str, str, str]]:
    for pattern in (_ORT_RUN, _ORT_NODE):
        m = pattern.search(text)
        if m:
            return [(m["name"], m["op"], _cap(_clean(m["reason"])))]
    return []


def _clean(line: str) -> str:
    for pattern in _NOISE:
        line = pattern.sub("", line)
    return line.strip()


def _is_frame(line: str) -> bool:
    """A C++ source location and signature (``/onnxruntime/...cc:136 onnxruntime::...``)."""
    return bool(re.match(r"^/\S+\.(cc|cpp|h|hpp):\d+ ", line)) and "[OpenVINO-EP]" not in line


def _cap(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3].rstrip() + "..."
