"""Several exported models -> one ONNX model the engine runs unchanged: the members side by side on the same input,
their class probabilities averaged.

Inference is a small part of the engine's per-image cost (1.4 ms of a 24 MP photo's ~70 ms, bench/README.md), so
a few members cost little at run time. The members must agree on everything the engine reads from a model: class
names, input size, resize mode and reducing gap.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import __version__
from engine.errors import ModelLoadError
from engine.model import (
    CLASS_NAMES_FILE,
    DRAFT_METADATA_KEY,
    ORIGINAL_DRAFT_METADATA_KEY,
    REDUCING_GAP_METADATA_KEY,
    RESIZE_METADATA_KEY,
    input_size,
    load_classifier,
    metadata_names,
)
from engine.preprocess import load_model_input
from trainer.export import ONNX_NAME
from trainer.imagenet import ARCHITECTURE_METADATA_KEY
from trainer.onnx_weights import store_float32, store_half

if TYPE_CHECKING:
    import onnx

#: ONNX metadata key listing the members of an ensemble (JSON: the combine rule; each member's file, as its last three
#: path parts, and sha256).
ENSEMBLE_METADATA_KEY = "blurflag_ensemble"
#: ONNX metadata key of the prior weights an ensemble's graph puts on its averaged probabilities (JSON: class -> weight;
#: absent: none, as in the bundled model; a prior on `sharp` is measured in models/MODEL_CARD.md, "A prior on sharp").
PRIOR_METADATA_KEY = "blurflag_class_prior"
#: The metadata every member must share (what the engine reads from a model). Their input sizes may differ: the graph
#: takes the largest and resizes it inside for a smaller member (`merge_onnx`).
MUST_AGREE = ("names", RESIZE_METADATA_KEY, REDUCING_GAP_METADATA_KEY)
#: Taken from the members of the largest input size (the graph's), which must agree; the others are resized inside.
DRAFT_KEYS = (DRAFT_METADATA_KEY, ORIGINAL_DRAFT_METADATA_KEY)
COMBINE_RULES = ("mean", "geomean")
PARITY_TOLERANCE = 1e-5
#: The parity tolerance with float16-stored weights (`half`): for the bundled model the largest |dp| measured was 0.031
#: on whole frames and 0.042 on quadrant views, of 2,180 held-out images (models/MODEL_CARD.md, "Float16 storage").
HALF_PARITY_TOLERANCE = 0.05


@dataclass(frozen=True)
class EnsembleReport:
    model_dir: Path
    members: int
    names: tuple[str, ...]
    max_abs_diff: float
    images_checked: int
    #: Members of a smaller input size only: max |dp| between the graph and the members each fed its own input made
    #: from the photo (the second resampling's effect, not a construction error); nan otherwise.
    resample_max_abs_diff: float = float("nan")


def _member_file(path: Path) -> Path:
    """A member given as a model folder (the engine's layout) or as its .onnx file."""
    path = Path(path)
    if path.is_dir():
        path = path / ONNX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    return path


def _architecture(meta: dict[str, str]) -> str:
    """A member's network, from its metadata: BlurFlag's own key, else an ultralytics export's description."""
    if meta.get(ARCHITECTURE_METADATA_KEY):
        return meta[ARCHITECTURE_METADATA_KEY]
    found = re.match(r"Ultralytics (\S+) model", meta.get("description", ""))
    return found.group(1) if found else "unknown"


def merge_onnx(member_files: Sequence[Path], combine: str = "mean", half: bool = False,
               prior: dict[str, float] | None = None) -> onnx.ModelProto:
    """One ONNX graph running every member on the shared input and averaging their probabilities.

    `mean` averages the probabilities; `geomean` averages log-probabilities and renormalises (a Softmax). The
    graph's metadata is what every member's says alike (names, resize, ...), its own description and
    architecture (the members' networks, in order) and the members' files. Members of different (square) input
    sizes share the largest: a smaller member gets it resized inside the graph (`_resize_node`; not exactly the input
    the engine makes from the photo for it alone: `ensemble_parity` measures the difference). `half` stores the
    weights as float16
    (trainer.onnx_weights.store_half). `prior` (class name -> weight, the others 1) reweights the combined
    probabilities and renormalises them: p'_c = w_c p_c / sum_k w_k p_k, a prior shift the engine sees as the model's
    own probabilities, on every view it runs."""
    import onnx
    from onnx import TensorProto, compose, helper

    if combine not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {COMBINE_RULES}, not {combine!r}")
    if len(member_files) < 2:
        raise ValueError("an ensemble needs at least two members")
    raw = [Path(f).read_bytes() for f in member_files]  # read once: parsed here, hashed for the metadata below
    protos = [store_float32(onnx.load_from_string(b)) for b in raw]  # one storage for all; `half` below
    metas = [{p.key: p.value for p in m.metadata_props} for m in protos]
    sizes = []   # each member's (square) input side
    for f, m, meta in zip(member_files, protos, metas):
        if len(m.graph.input) != 1 or len(m.graph.output) != 1:
            raise ValueError(f"{f}: expected one input and one output, got {len(m.graph.input)} and "
                             f"{len(m.graph.output)}")
        sizes.append(_square_size(f, meta, m))
        for key in MUST_AGREE:
            if meta.get(key) != metas[0].get(key):
                raise ValueError(f"{f}: its {key!r} ({meta.get(key)!r}) differs from the first member's "
                                 f"({metas[0].get(key)!r})")
        if ENSEMBLE_METADATA_KEY in meta:
            raise ValueError(f"{f} is an ensemble already; merge its members with the others instead")
        last = [n for n in m.graph.node if m.graph.output[0].name in n.output]
        if not last or last[0].op_type != "Softmax":
            raise ValueError(f"{f}: its output is not a Softmax, so it gives no probabilities to average")
        if sorted((o.domain, o.version) for o in m.opset_import) != \
                sorted((o.domain, o.version) for o in protos[0].opset_import):
            raise ValueError(f"{f}: exported with other opsets than the first member; export both alike")
    first = protos[0]
    size = max(sizes)
    largest = protos[sizes.index(size)]   # its input (name, shape) is the graph's
    input_name = largest.graph.input[0].name
    nodes, inits, infos, outs = [], [], [], []
    for i, m in enumerate(protos):
        p = compose.add_prefix(m, f"m{i}/")
        g = p.graph
        if sizes[i] == size:
            nodes.append(helper.make_node("Identity", [input_name], [g.input[0].name], name=f"m{i}/input"))
        else:
            inits.append(helper.make_tensor(f"ensemble/size{i}", TensorProto.INT64, [2], [sizes[i], sizes[i]]))
            nodes.append(_resize_node(input_name, f"ensemble/size{i}", g.input[0].name, f"m{i}/input"))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        infos.extend(g.value_info)
        outs.append(g.output[0].name)
    n = len(protos)
    scale = helper.make_tensor("ensemble/scale", TensorProto.FLOAT, [], [1.0 / n])
    inits.append(scale)
    output_name = first.graph.output[0].name
    names = _class_names(member_files[0], metas[0])
    weights = _prior_weights(prior, names)
    combined = output_name if weights is None else "ensemble/combined"
    if combine == "mean":
        nodes.append(helper.make_node("Sum", outs, ["ensemble/sum"], name="ensemble/sum"))
        nodes.append(helper.make_node("Mul", ["ensemble/sum", "ensemble/scale"], [combined], name="ensemble/mean"))
    else:
        inits.append(helper.make_tensor("ensemble/eps", TensorProto.FLOAT, [], [1e-12]))
        logs = []
        for i, o in enumerate(outs):
            nodes.append(helper.make_node("Add", [o, "ensemble/eps"], [f"ensemble/p{i}"], name=f"ensemble/eps{i}"))
            nodes.append(helper.make_node("Log", [f"ensemble/p{i}"], [f"ensemble/log{i}"], name=f"ensemble/log{i}"))
            logs.append(f"ensemble/log{i}")
        nodes.append(helper.make_node("Sum", logs, ["ensemble/sum"], name="ensemble/sum"))
        nodes.append(helper.make_node("Mul", ["ensemble/sum", "ensemble/scale"], ["ensemble/meanlog"],
                                      name="ensemble/meanlog"))
        nodes.append(helper.make_node("Softmax", ["ensemble/meanlog"], [combined], axis=1, name="ensemble/softmax"))
    if weights is not None:  # weighted, then divided by its row sum (a MatMul with ones: no opset-dependent ReduceSum)
        c = len(weights)
        inits.append(helper.make_tensor("ensemble/prior", TensorProto.FLOAT, [1, c], [float(w) for w in weights]))
        inits.append(helper.make_tensor("ensemble/ones", TensorProto.FLOAT, [c, c], [1.0] * (c * c)))
        nodes.append(helper.make_node("Mul", [combined, "ensemble/prior"], ["ensemble/weighted"],
                                      name="ensemble/prior"))
        nodes.append(helper.make_node("MatMul", ["ensemble/weighted", "ensemble/ones"], ["ensemble/total"],
                                      name="ensemble/total"))
        nodes.append(helper.make_node("Div", ["ensemble/weighted", "ensemble/total"], [output_name],
                                      name="ensemble/normalise"))
    graph = helper.make_graph(nodes, "blurflag_ensemble", [largest.graph.input[0]], [first.graph.output[0]],
                              initializer=inits, value_info=infos)
    model = helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="blurflag-train ensemble")
    model.ir_version = first.ir_version
    networks = ", ".join(_architecture(m) for m in metas)
    meta = {k: v for k, v in metas[0].items() if all(m.get(k) == v for m in metas[1:])}
    for key in DRAFT_KEYS:   # how to decode for the graph's input: what its members of that size ask for
        asked = {m.get(key) for m, s in zip(metas, sizes) if s == size}
        if len(asked) > 1:
            raise ValueError(f"the members of the largest input size ({size}) ask for different {key!r}: "
                             f"{sorted(str(a) for a in asked)}")
        meta.pop(key, None)
        if asked != {None}:
            meta[key] = asked.pop()
    meta["imgsz"] = str([size, size])
    meta["description"] = f"BlurFlag: {n} networks averaged ({combine}): {networks}"
    meta[ARCHITECTURE_METADATA_KEY] = f"ensemble of {networks}"
    meta["blurflag_version"] = __version__
    meta[ENSEMBLE_METADATA_KEY] = json.dumps({
        "combine": combine,
        "members": [{"file": "/".join(Path(f).parts[-3:]), "sha256": hashlib.sha256(b).hexdigest(),
                     "architecture": _architecture(m), **({"imgsz": s} if s != size else {})}
                    for f, b, m, s in zip(member_files, raw, metas, sizes)],
    })
    meta.pop(PRIOR_METADATA_KEY, None)
    if weights is not None:
        meta[PRIOR_METADATA_KEY] = json.dumps(dict(zip(names, weights)))
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(model)
    return store_half(model) if half else model


def _resize_node(source: str, size: str, out: str, name: str) -> onnx.NodeProto:
    """The graph's resize for a smaller member: antialiased cubic (a = -0.75), half-pixel centres (opset 18). The
    engine resizes a photo with Lanczos, which ONNX lacks; of the graph's filters this one comes closest for a
    224-px network fed from 320 px (models/MODEL_CARD.md, "A MobileNetV2 at 320 px on four draws")."""
    from onnx import helper

    return helper.make_node("Resize", [source, "", "", size], [out], name=name, mode="cubic", cubic_coeff_a=-0.75,
                            antialias=1, axes=[2, 3], coordinate_transformation_mode="half_pixel")


def resize_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """A batch of model inputs (N x 3 x S x S) resized to `size` exactly as the merged graph resizes for a member."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [_resize_node("x", "size", "y", "resize")], "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, size, size])],
        initializer=[helper.make_tensor("size", TensorProto.INT64, [2], [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _square_size(path: Path, meta: dict[str, str], proto: onnx.ModelProto) -> int:
    """A member's input side, read as the engine reads it (engine.model.input_size)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    try:
        return input_size(meta, shape)
    except ModelLoadError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _class_names(path: Path, meta: dict[str, str]) -> list[str]:
    """A member's class names in output order, read as the engine reads them (engine.model.metadata_names)."""
    try:
        return list(metadata_names(meta) or ())
    except ModelLoadError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _prior_weights(prior: dict[str, float] | None, names: Sequence[str]) -> list[float] | None:
    """One weight per class in output order (1 where `prior` names none); None when every weight is 1."""
    if not prior:
        return None
    unknown = sorted(set(prior) - set(names))
    if unknown:
        raise ValueError(f"prior names classes the model does not have: {unknown} (classes: {list(names)})")
    for name, w in prior.items():
        if not (np.isfinite(w) and w > 0):
            raise ValueError(f"the prior weight of {name!r} must be a positive number, not {w!r}")
    weights = [float(prior.get(n, 1.0)) for n in names]
    return None if all(w == 1.0 for w in weights) else weights


def build_ensemble(
    members: Sequence[Path],
    model_dir: Path,
    combine: str = "mean",
    parity_images: Sequence[Path] = (),
    half: bool = False,
    prior: dict[str, float] | None = None,
) -> EnsembleReport:
    """Write `model_dir/blurflag.onnx` + `class_names.json` for the ensemble of `members` (model folders or .onnx
    files) and check, through the engine, that it gives the members' combined probabilities on `parity_images`
    (with `half`, float16-stored weights: within HALF_PARITY_TOLERANCE), reweighted by `prior` (merge_onnx)."""
    import onnx

    files = [_member_file(m) for m in members]
    model_dir = Path(model_dir)
    if model_dir.resolve() in {f.parent.resolve() for f in files}:
        raise ValueError(f"{model_dir} holds a member; write the ensemble to another folder")
    model_dir.mkdir(parents=True, exist_ok=True)
    others = [p for p in model_dir.glob("*.onnx") if p.name != ONNX_NAME]
    if others:
        raise FileExistsError(f"{model_dir} already holds another model ({others[0].name}); use an empty folder")
    merged = merge_onnx(files, combine, half, prior)
    names = tuple(str(n) for n in json.loads((files[0].parent / CLASS_NAMES_FILE).read_text(encoding="utf-8")))
    staged = model_dir / (ONNX_NAME + ".tmp")
    onnx.save(merged, str(staged))
    staged.replace(model_dir / ONNX_NAME)
    (model_dir / CLASS_NAMES_FILE).write_text(json.dumps(list(names), indent=2) + "\n", encoding="utf-8")
    diff = resampled = float("nan")
    if parity_images:
        diff, resampled = ensemble_parity(files, model_dir, parity_images, combine, _prior_weights(prior, names))
        tolerance = HALF_PARITY_TOLERANCE if half else PARITY_TOLERANCE
        if not diff <= tolerance:
            raise RuntimeError(f"ensemble parity failed: max |dp| = {diff:.2e} > {tolerance:.0e}")
    return EnsembleReport(model_dir, len(files), names, diff, len(parity_images), resampled)


def combine_probabilities(probs: Sequence[np.ndarray], combine: str = "mean",
                          weights: Sequence[float] | None = None) -> np.ndarray:
    """The members' probabilities (each N x C) combined the way the merged graph does it (`weights`: its prior, one
    per class in output order)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if combine == "mean":
        out = stack.mean(axis=0)
    else:
        z = np.log(stack + 1e-12).mean(axis=0)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        out = z / z.sum(axis=1, keepdims=True)
    if weights is None:
        return out
    out = out * np.asarray(weights, dtype=np.float64)
    return out / out.sum(axis=1, keepdims=True)


def ensemble_parity(member_files: Sequence[Path], model_dir: Path, images: Sequence[Path], combine: str,
                    weights: Sequence[float] | None = None) -> tuple[float, float]:
    """Max |difference| between the merged model and the members run one by one, through the engine, each fed the
    graph's input (a smaller member: resized as the graph does, `resize_batch`); and, where a member's input size
    differs, the max |difference| when each member is fed its own input made from the photo (else nan)."""
    ensemble = load_classifier(model_dir)
    batches = {ensemble.spec: np.stack([load_model_input(p, ensemble.spec) for p in images])}
    member_probs = []
    with tempfile.TemporaryDirectory(prefix="blurflag-member-") as tmp:
        for i, f in enumerate(member_files):
            d = Path(tmp) / str(i)  # a member's folder may hold other files; load exactly this .onnx
            d.mkdir()
            shutil.copy2(f, d / ONNX_NAME)
            shutil.copy2(f.parent / CLASS_NAMES_FILE, d / CLASS_NAMES_FILE)
            member = load_classifier(d)
            graph_input = batches[ensemble.spec]
            if member.spec.size != ensemble.spec.size:
                graph_input = resize_batch(graph_input, member.spec.size)
            if member.spec not in batches:  # a smaller member: its own input, made from the photo as for it alone
                batches[member.spec] = np.stack([load_model_input(p, member.spec) for p in images])
            member_probs.append((member.predict(graph_input), member.predict(batches[member.spec])))
    merged = ensemble.predict(batches[ensemble.spec])
    diff = float(np.abs(merged - combine_probabilities([g for g, _ in member_probs], combine, weights)).max())
    if len(batches) == 1:
        return diff, float("nan")
    own = combine_probabilities([o for _, o in member_probs], combine, weights)
    return diff, float(np.abs(merged - own).max())


def is_ensemble(proto: onnx.ModelProto) -> bool:
    """Whether `proto` was written by `merge_onnx`."""
    return any(p.key == ENSEMBLE_METADATA_KEY for p in proto.metadata_props)


def member_model(proto: onnx.ModelProto, index: int = 0) -> onnx.ModelProto:
    """Member `index` of an ensemble written by `merge_onnx`, as the stand-alone model it was (names unprefixed,
    weights stored as float32), e.g. to start training from its weights."""
    from onnx import helper

    prefix = f"m{index}/"
    graph = proto.graph
    ident = [n for n in graph.node if n.name == f"{prefix}input"]
    if not is_ensemble(proto) or not ident:
        raise ValueError(f"not an ensemble with a member {index}")
    member_input = ident[0].output[0]
    outer_in, outer_out = graph.input[0].name, graph.output[0].name
    producer = {o: n for n in graph.node for o in n.output}

    def member_output(edge: str) -> str:  # back through the combining nodes to a member's own output
        while edge in producer and producer[edge].name.startswith("ensemble/"):
            edge = producer[edge].input[0]
        return edge

    sums = [n for n in graph.node if n.name == "ensemble/sum"]
    member_outputs = [member_output(i) for i in sums[0].input] if sums else []
    if index >= len(member_outputs):
        raise ValueError(f"the ensemble has {len(member_outputs)} members, not {index + 1}")
    rename = {member_input: outer_in, member_outputs[index]: outer_out}

    def name(n: str) -> str:
        if n in rename:
            return rename[n]
        return n.removeprefix(prefix)

    nodes = []
    for n in graph.node:
        if not n.name.startswith(prefix) or n.name == f"{prefix}input":
            continue
        copy = helper.make_node(n.op_type, [name(i) for i in n.input], [name(o) for o in n.output],
                                name=name(n.name), domain=n.domain or None)
        copy.attribute.extend(n.attribute)
        nodes.append(copy)
    def renamed(items: Any) -> list[Any]:  # the member's initializers / value infos, unprefixed copies
        out = []
        for item in items:
            if item.name.startswith(prefix):
                copy = type(item)()
                copy.CopyFrom(item)
                copy.name = name(item.name)
                out.append(copy)
        return out

    # the member's own input size, where the graph resized for it (recorded by merge_onnx)
    record = json.loads(next(p.value for p in proto.metadata_props if p.key == ENSEMBLE_METADATA_KEY))
    entry = record["members"][index] if index < len(record.get("members", [])) else {}
    member_input = type(graph.input[0])()
    member_input.CopyFrom(graph.input[0])
    if "imgsz" in entry:  # a static input takes the member's size; a dynamic one stays dynamic, as members export
        for axis in (2, 3):
            dim = member_input.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_value"):
                dim.dim_value = int(entry["imgsz"])
    out = helper.make_graph(nodes, graph.name, [member_input], [graph.output[0]],
                            initializer=renamed(graph.initializer), value_info=renamed(graph.value_info))
    model = helper.make_model(out, opset_imports=list(proto.opset_import), producer_name=proto.producer_name)
    model.ir_version = proto.ir_version
    # the ensemble's metadata but its own description: the member's network, where the ensemble recorded it
    architecture = entry.get("architecture")
    own = {ENSEMBLE_METADATA_KEY, PRIOR_METADATA_KEY, "description", ARCHITECTURE_METADATA_KEY}
    if "imgsz" in entry:  # a member resized inside the graph: the graph's decoding was not asked for by it
        own |= set(DRAFT_KEYS)
    for p in proto.metadata_props:
        if p.key == "imgsz" and "imgsz" in entry:
            model.metadata_props.add(key="imgsz", value=str([entry["imgsz"], entry["imgsz"]]))
        elif p.key not in own:
            model.metadata_props.add(key=p.key, value=p.value)
    if architecture:
        model.metadata_props.add(key="description", value=f"BlurFlag: {architecture}, network {index + 1} of an "
                                                           "ensemble")
        model.metadata_props.add(key=ARCHITECTURE_METADATA_KEY, value=architecture)
    return store_float32(model)  # its weights as exported (up to float16 rounding, where the ensemble stored so)
