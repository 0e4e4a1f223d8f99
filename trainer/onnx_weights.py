"""An ONNX graph's weights stored as float16 (half the file), and back as float32.

A network's ONNX export keeps every weight as float32. Stored as float16 (`store_half`), each weight initializer `W`
becomes `W.f16` followed by a `Cast` to float32 whose output keeps the name `W`: the graph still computes in float32
(onnxruntime folds the casts once when it loads the model), the file is half the size, and each weight moves by
float16 rounding (relative 2^-11). `blurflag-train ensemble --half` stores the bundled model so (models/MODEL_CARD.md,
"Float16 storage"). `store_float32` undoes the storage (not the rounding): `trainer.ensemble.member_model` gives
each network back so, so whoever reads weights out of it by name (a retraining start) finds them as exported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

#: Suffix of a float16-stored weight's initializer; its Cast node's output keeps the weight's own name.
HALF_SUFFIX = ".f16"
#: ONNX metadata key saying how the weights are stored (absent: float32, as exported).
STORAGE_METADATA_KEY = "blurflag_weight_storage"
#: Initializers with fewer elements stay float32 (scalars and the like: nothing to save).
MIN_HALF_ELEMENTS = 16
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = type(model)()
    out.CopyFrom(model)
    return out


def _set_storage(model: onnx.ModelProto, value: str | None) -> None:
    props = [p for p in model.metadata_props if p.key != STORAGE_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if value is not None:
        model.metadata_props.add(key=STORAGE_METADATA_KEY, value=value)


def _half_casts(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The Cast nodes `store_half` wrote, by the float16 initializer each one reads."""
    from onnx import TensorProto

    halves = {i.name for i in graph.initializer if i.name.endswith(HALF_SUFFIX) and i.data_type == TensorProto.FLOAT16}
    return {n.input[0]: n for n in graph.node
            if n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in halves
            and n.output[0] + HALF_SUFFIX == n.input[0]}


def store_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose float32 weights (of at least MIN_HALF_ELEMENTS elements) are stored as float16.

    A weight beyond float16's range stays float32; so does one stored as float16 already."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = _copy(model)
    graph = out.graph
    inits, casts = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if values is None or values.size < MIN_HALF_ELEMENTS or not np.all(np.abs(values) <= _FLOAT16_MAX):
            inits.append(init)
            continue
        inits.append(numpy_helper.from_array(values.astype(np.float16), init.name + HALF_SUFFIX))
        casts.append(helper.make_node("Cast", [init.name + HALF_SUFFIX], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "/to_float"))
    nodes = [*casts, *graph.node]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(nodes)
    _set_storage(out, "float16")
    onnx.checker.check_model(out)
    return out


def store_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every weight `store_half` stored as float16 stored as float32 again (as rounded)."""
    from onnx import numpy_helper

    out = _copy(model)
    graph = out.graph
    casts = _half_casts(graph)
    if not casts:
        return out
    inits = [numpy_helper.from_array(numpy_helper.to_array(i).astype(np.float32), casts[i.name].output[0])
             if i.name in casts else i for i in graph.initializer]
    nodes = [n for n in graph.node if not (n.op_type == "Cast" and n.input and n.input[0] in casts)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(nodes)
    _set_storage(out, None)
    return out
