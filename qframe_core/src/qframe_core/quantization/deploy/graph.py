"""The integer graph of a converted model, as the deployment helpers see it.

A converted model (fx ``GraphModule``, eager model, or its ``torch.jit.trace``)
is traced to TorchScript; its inlined graph is cut into *layers*:

* every qframe integer module the march's op table produces (the
  ``quantized_module`` of an :class:`~qframe_core.lowering.OpLowering`) is one
  layer, whatever torch ops it runs inside (the outermost one wins);
* every op outside such modules is a layer of its own: a passthrough op of the
  march's table (flatten, view, relu on integers, ...), pure data movement, or
  float compute, which no march runs (a hybrid model's CPU ops).

The march's op table (the registry's lowering records) is the only source of
what a march runs; nothing here names a march.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import warnings
from typing import Any, Iterator, Optional, Sequence, Union

import attrs
import torch
from torch import fx, nn

from ...errors import UnsupportedOpError
from ...lowering import LoweringKind, op_display_name
from ...registry import registry

#: layer kinds
INTEGER, PASSTHROUGH, LAYOUT, FLOAT, UNLISTED, QAT, FOREIGN = (
    "integer", "passthrough", "layout", "float", "unlisted", "qat", "foreign")
#: kinds check_model refuses
REFUSED = (FLOAT, UNLISTED, QAT, FOREIGN)

#: aten ops that only move data (no arithmetic): allowed outside integer modules on any dtype
LAYOUT_OPS = frozenset({
    "view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze", "select", "slice",
    "split", "split_with_sizes", "chunk", "unbind", "expand", "expand_as", "view_as", "reshape_as", "detach",
    "alias", "t", "numpy_T", "__getitem__", "unsafe_chunk", "unsafe_split", "movedim", "unflatten", "narrow",
    "dropout", "feature_dropout", "identity",
})

ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor]]

#: the rule quoted when float compute is left in the model (the seeds' words)
HYBRID_RULE = ("hybrid models cannot pass check_model nor be compiled "
               "(混合模型不能通过 check_model 也不能编译): every compute op between the model's inputs and outputs "
               "must be an integer op of the march")


def as_inputs(example_inputs: ExampleInputs, who: str) -> tuple[torch.Tensor, ...]:
    """``example_input`` or ``[example_input, ...]`` as a tuple of CPU tensors."""
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple = (example_inputs,)
    elif isinstance(example_inputs, (list, tuple)):
        inputs = tuple(example_inputs)
    else:
        raise TypeError(f"{who}: example_inputs must be a tensor or a list/tuple of tensors (the seeds pass "
                        f"[example_input]), got {type(example_inputs).__name__}")
    if not inputs:
        raise ValueError(f"{who}: example_inputs is empty; pass [example_input]")
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{who}: example input {i} is a {type(t).__name__}, not a tensor")
        if t.device.type != "cpu":
            raise ValueError(f"{who}: example input {i} is on {t.device}; deployment runs on the CPU "
                             f"(由于编译器只支持 CPU，因此模型和数据必须放在 CPU 上): pass model.cpu() and input.cpu()")
    return inputs


@contextlib.contextmanager
def quiet_trace() -> Iterator[None]:
    """Silence torch.jit's deprecation and TracerWarnings (the seeds show these as expected noise)."""
    from ...jit import _quiet_torch_jit

    with _quiet_torch_jit(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def trace(module: nn.Module, inputs: tuple[torch.Tensor, ...], who: str) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of a converted model (a ScriptModule is returned as is)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    from ...jit import _ensure_ops

    _ensure_ops()
    try:
        with quiet_trace(), torch.no_grad():
            return torch.jit.trace(module.eval(), inputs, check_trace=False)
    except Exception as exc:
        raise UnsupportedOpError(
            f"{who}: torch.jit.trace of {type(module).__name__} failed ({type(exc).__name__}: {exc}). A deployable "
            f"model is a converted integer model whose forward traces: convert it with convert_fx/convert and make "
            f"sure its forward takes and returns tensors") from exc


def run(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The model's outputs as a flat tuple of tensors."""
    with torch.no_grad(), quiet_trace():
        out = module(*inputs)
    return flatten_outputs(out)


def flatten_outputs(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)):
        return tuple(t for o in out for t in flatten_outputs(o))
    if isinstance(out, dict):
        return tuple(t for k in sorted(out) for t in flatten_outputs(out[k]))
    raise TypeError(f"a deployable model returns tensors (or lists/tuples/dicts of them), got {type(out).__name__}")


# -- classes of the modules in the model ---------------------------------------------------------
_MANGLE = re.compile(r"___torch_mangle_\d+\.")


def script_class_path(sm: torch.jit.ScriptModule) -> str:
    """``qframe_core.nn.quantized.weighted.Conv2d`` for a traced integer Conv2d."""
    name = sm._c._type().qualified_name()
    name = name[len("__torch__."):] if name.startswith("__torch__.") else name
    return _MANGLE.sub("", name)


def _import_class(path: str) -> Optional[type]:
    mod, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except Exception:
        return None
    return obj if isinstance(obj, type) else None


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@attrs.frozen
class ModuleInfo:
    """One module of the model: its path (``features.0.conv``), class and dotted class path."""

    path: str
    cls: Optional[type]
    class_path: str
    module: Any


def module_table(module: nn.Module) -> dict[str, ModuleInfo]:
    """path -> :class:`ModuleInfo` for every module (ScriptModules resolved to their Python classes)."""
    table = {}
    for path, sub in module.named_modules():
        if isinstance(sub, torch.jit.ScriptModule):
            cp = script_class_path(sub)
            cls = _import_class(cp)
            if cls is None and cp.startswith("torch.fx.graph_module."):  # a GraphModule named after its model
                cls = fx.GraphModule
        else:
            cls = type(sub)
            cp = class_path(cls)
        if isinstance(sub, fx.GraphModule) or cls is fx.GraphModule:
            cp = "torch.fx.GraphModule"  # not the per-instance GraphModuleImpl class
        elif cls is not None:
            cp = op_display_name(cls)  # torch.nn.Conv2d rather than torch.nn.modules.conv.Conv2d
        table[path] = ModuleInfo(path, cls, cp, sub)
    return table


@attrs.frozen
class MarchTable:
    """What the march's op table says about module classes and ops (from the registry)."""

    march: str
    integer_classes: frozenset
    integer_classes_any_march: frozenset
    qat_classes: frozenset
    passthrough_classes: frozenset
    passthrough_ops: frozenset

    @classmethod
    def of(cls, march: str) -> MarchTable:
        integer, passthrough_cls, passthrough_ops = set(), set(), set()
        for low in registry.lowerings(march):
            if low.kind is LoweringKind.MODULE and low.quantized_module is not None:
                integer.add(low.quantized_module)
            elif low.kind is LoweringKind.PASSTHROUGH:
                if isinstance(low.op, type):
                    passthrough_cls.add(low.op)
                else:
                    passthrough_ops.add(_op_name(low.op))
        integer_any, qat = set(), set()
        for c in registry.contributions("lowering"):
            if c.value.quantized_module is not None:
                integer_any.add(c.value.quantized_module)
            if c.value.qat_module is not None:
                qat.add(c.value.qat_module)
        return cls(march, frozenset(integer), frozenset(integer_any), frozenset(qat), frozenset(passthrough_cls),
                   frozenset(passthrough_ops))

    def is_qat(self, cls: Optional[type]) -> bool:
        if cls is None:
            return False
        if cls in self.qat_classes:
            return True
        from ..fake_quantize import FakeQuantize
        from ..observer import ObserverBase

        return issubclass(cls, (FakeQuantize, ObserverBase))


def _op_name(op: Any) -> str:
    """``torch.flatten`` -> ``flatten``; ``"Tensor.view"`` -> ``view``; ``operator.getitem`` -> ``__getitem__``."""
    if isinstance(op, str):
        name = op.rsplit(".", 1)[-1]
    else:
        name = getattr(op, "__name__", str(op))
    return "__getitem__" if name == "getitem" else name


# -- the traced graph cut into layers --------------------------------------------------------------
@attrs.frozen
class TensorInfo:
    """A tensor's shape (None: unknown) and dtype name (``"?"``: unknown)."""

    shape: Optional[tuple[int, ...]]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape or ():
            n *= d
        return n * _itemsize(self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}{list(self.shape) if self.shape is not None else '[?]'}"


def _itemsize(dtype: str) -> int:
    try:
        return torch.empty((), dtype=getattr(torch, dtype)).element_size()
    except Exception:
        return 4


@attrs.define
class Layer:
    """One op of the deployed graph.

    Attributes:
        index: position in execution order.
        name: the module path (integer modules) or ``<module path>:<aten op>``.
        path: the module path the op runs in ("" = the model's own forward).
        op: the class (``qframe_core.nn.quantized.weighted.Conv2d``) or op (``aten::flatten``).
        kind: integer, passthrough, layout, float (float compute), unlisted (an op on integers the march's table
            does not list), qat (an unconverted QAT module) or foreign (an integer module only another march lists).
        nodes: the TorchScript nodes it runs.
        inputs, outputs: the tensor values crossing its boundary (graph values).
        macs: multiply-accumulates of its conv/linear/matmul ops.
        torch_ops: the distinct torch op kinds it runs (for messages).
    """

    index: int
    name: str
    path: str
    op: str
    kind: str
    nodes: list = attrs.field(factory=list)
    inputs: list = attrs.field(factory=list)
    outputs: list = attrs.field(factory=list)
    input_info: list = attrs.field(factory=list)
    output_info: list = attrs.field(factory=list)
    macs: int = 0
    torch_ops: list = attrs.field(factory=list)


def tensor_info(value: Any) -> Optional[TensorInfo]:
    t = value.type()
    if t.kind() != "TensorType":
        return None
    sizes = t.sizes()
    dtype = t.dtype()
    return TensorInfo(tuple(sizes) if sizes is not None else None,
                      str(dtype).replace("torch.", "") if dtype is not None else "?")


def _is_float(value: Any) -> bool:
    t = value.type()
    return t.kind() == "TensorType" and t.dtype() is not None and t.dtype().is_floating_point


def _is_shape_scalar(value: Any) -> bool:
    """0-dim integer tensors: shape arithmetic recorded by the tracer (x.size(0) * 2), not data."""
    info = tensor_info(value)
    return info is not None and info.shape == () and info.dtype not in ("?", "bool") and not _is_float(value)


_HIERARCHY_PART = re.compile(r"([^.()]+)\(([^()]*)\)")


def scope_path(node: Any) -> str:
    """The module path a node runs in (``features.0``; the model itself: ``""``).

    From the tracer's scope (``__module.features/__module.features.0``), else from the inlined call stack
    (``features(Sequential).0(Conv2d)``), which survives ``torch.jit.save``/``load`` where scopes do not.
    """
    scope = node.scopeName()
    last = scope.rsplit("/", 1)[-1] if scope else ""
    if last.startswith("__module"):
        return last[len("__module"):].lstrip(".")
    hierarchy = node.getModuleHierarchy()
    return ".".join(name for name, _ in _HIERARCHY_PART.findall(hierarchy)) if hierarchy else ""


def _prefixes(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return ["", *(".".join(parts[:i]) for i in range(1, len(parts) + 1))]


@attrs.define
class DeployGraph:
    """A traced converted model cut into :class:`Layer` records."""

    script: torch.jit.ScriptModule
    graph: Any
    layers: list[Layer]
    graph_inputs: list  # tensor values (the ``self`` input dropped)
    graph_outputs: list  # tensor values
    modules: dict[str, ModuleInfo]
    producer: dict  # value -> Layer (None for graph inputs)

    def edges(self) -> list[tuple[str, str]]:
        """``(source, target)`` ids: ``in<i>``, ``L<index>``, ``out<i>``; each pair once."""
        seen: list[tuple[str, str]] = []
        in_ids = {v: f"in{i}" for i, v in enumerate(self.graph_inputs)}

        def src_of(v: Any) -> Optional[str]:
            if v in in_ids:
                return in_ids[v]
            layer = self.producer.get(v)
            return None if layer is None else f"L{layer.index}"

        for layer in self.layers:
            for v in layer.inputs:
                s = src_of(v)
                if s is not None and (s, f"L{layer.index}") not in seen:
                    seen.append((s, f"L{layer.index}"))
        for i, v in enumerate(self.graph_outputs):
            s = src_of(v)
            if s is not None and (s, f"out{i}") not in seen:
                seen.append((s, f"out{i}"))
        return seen


def holds_tensor(t: Any) -> bool:
    """A Tensor, or a list/tuple type holding tensors."""
    kind = t.kind()
    if kind == "TensorType":
        return True
    if kind == "ListType":
        return holds_tensor(t.getElementType())
    if kind == "TupleType":
        return any(holds_tensor(e) for e in t.elements())
    if kind == "OptionalType":
        return holds_tensor(t.getElementType())
    return False


_PRIM_CONTAINERS = frozenset({"prim::ListConstruct", "prim::TupleConstruct", "prim::ListUnpack", "prim::TupleUnpack",
                              "prim::TupleIndex"})


def tensor_sources(value: Any) -> list:
    """The op outputs behind ``value``, looking through prim list/tuple construction and unpacking."""
    out: list = []
    stack = [value]
    seen = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        node = v.node()
        if node.kind() in _PRIM_CONTAINERS:
            stack.extend(node.inputs())
        elif holds_tensor(v.type()):
            out.append(v)
    return out


def _attr_value(root: torch.jit.ScriptModule, value: Any) -> Optional[torch.Tensor]:
    """The tensor a ``prim::GetAttr`` chain reads (weights), or None."""
    names = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = node.input().node()
    if node.kind() != "prim::Param":
        return None
    obj: Any = root
    for n in reversed(names):
        obj = getattr(obj, n, None)
    return obj if isinstance(obj, torch.Tensor) else None


def parameter_values(root: torch.jit.ScriptModule, layer: Layer) -> list[torch.Tensor]:
    """The weights/buffers a layer reads."""
    out, seen = [], set()
    for node in layer.nodes:
        for v in node.inputs():
            if v.node().kind() == "prim::GetAttr":
                t = _attr_value(root, v)
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
    return out


def _macs(root: torch.jit.ScriptModule, node: Any) -> int:
    kind = node.kind()
    outs = [tensor_info(o) for o in node.outputs()]
    out = outs[0] if outs and outs[0] is not None else None
    if out is None:
        return 0
    if out.shape is None:
        return 0
    numel = 1
    for d in out.shape:
        numel *= d
    if kind in ("qframe::conv2d", "qframe::linear", "aten::_convolution", "aten::conv2d", "aten::conv1d",
                "aten::conv3d", "aten::linear", "aten::conv_transpose2d"):
        w = _attr_value(root, node.inputsAt(2 if kind.startswith("qframe::") else 1))
        if w is None:
            winfo = tensor_info(node.inputsAt(2 if kind.startswith("qframe::") else 1))
            if winfo is None or winfo.shape is None or not winfo.shape:
                return 0
            wshape = winfo.shape
        else:
            wshape = tuple(w.shape)
        per_out = 1
        for d in wshape[1:]:
            per_out *= d
        if kind in ("aten::_convolution", "aten::conv_transpose2d") and _is_transposed(node):
            x = tensor_info(node.inputsAt(0))
            if x is None or x.shape is None:
                return 0
            n_in = 1
            for d in x.shape:
                n_in *= d
            return n_in * per_out
        return numel * per_out
    if kind in ("aten::matmul", "aten::bmm", "aten::mm"):
        a = tensor_info(node.inputsAt(0))
        return numel * (a.shape[-1] if a is not None and a.shape else 0)
    return 0


def _is_transposed(node: Any) -> bool:
    if node.kind() == "aten::conv_transpose2d":
        return True
    try:
        return bool(node.inputsAt(6).toIValue())
    except Exception:
        return False


def build(script: torch.jit.ScriptModule, table: MarchTable, inputs: tuple[torch.Tensor, ...],
          modules: Optional[dict[str, ModuleInfo]] = None) -> DeployGraph:
    """Cut the inlined graph of ``script`` into layers, classified against the march's ``table``.

    Tensor types missing from the graph (a ``torch.jit.load``-ed program) are filled in from one run on
    ``inputs``.
    """
    modules = modules if modules is not None else module_table(script)
    graph = script.inlined_graph
    for node in graph.nodes():
        if list(node.blocks()):
            raise UnsupportedOpError(
                f"{node.kind()} at {scope_path(node) or 'the model'}: the program has control flow (a "
                f"torch.jit.script model?); deployment takes a traced integer model. Way out: pass the converted "
                f"model or its torch.jit.trace")
    _complete_types(script, graph, inputs)
    layers: list[Layer] = []
    by_module: dict[str, Layer] = {}
    calls: dict[str, int] = {}
    last_layer: Optional[Layer] = None
    producer: dict = {}

    def classify_path(path: str) -> tuple[str, Optional[ModuleInfo]]:
        """The outermost integer/QAT module enclosing ``path``, else the innermost module."""
        for prefix in _prefixes(path):
            info = modules.get(prefix)
            if info is None or info.cls is None:
                continue
            if info.cls in table.integer_classes:
                return INTEGER, info
            if info.cls in table.integer_classes_any_march:
                return FOREIGN, info
            if table.is_qat(info.cls):
                return QAT, info
        for prefix in reversed(_prefixes(path)):
            if prefix in modules:
                return "", modules[prefix]
        return "", None

    for node in graph.nodes():
        kind = node.kind()
        if kind.startswith("prim::"):
            continue
        outs = list(node.outputs())
        tensors_out = [o for o in outs if holds_tensor(o.type())]
        if not tensors_out:
            continue  # aten::size, aten::Int, ...: shape bookkeeping
        tensor_ins = [v for v in node.inputs() if holds_tensor(v.type())
                      and v.node().kind() not in ("prim::GetAttr", "prim::Constant")]
        if all(_is_shape_scalar(v) for v in tensors_out + tensor_ins):
            continue
        path = scope_path(node)
        owner_kind, info = classify_path(path)
        if owner_kind:
            assert info is not None
            layer = by_module.get(info.path)
            if layer is None or layer is not last_layer:  # a module called again later is another op
                calls[info.path] = calls.get(info.path, 0) + 1
                name = (info.path or "<model>") + (f"#{calls[info.path]}" if calls[info.path] > 1 else "")
                layer = Layer(len(layers), name, info.path, info.class_path, owner_kind)
                layers.append(layer)
                by_module[info.path] = layer
        else:
            op = kind.split("::", 1)[-1].rstrip("_") if not kind.endswith("__") else kind.split("::", 1)[-1]
            floats = any(_is_float(v) for v in tensors_out + tensor_ins)
            mod_cls = info.cls if info is not None else None
            if kind.startswith("qframe::"):
                layer_kind = INTEGER
            elif op in LAYOUT_OPS:
                layer_kind = LAYOUT
            elif not floats and (op in table.passthrough_ops or (mod_cls is not None
                                                                 and mod_cls in table.passthrough_classes)):
                layer_kind = PASSTHROUGH
            else:
                layer_kind = FLOAT if floats else UNLISTED
            name = f"{path}:{kind}" if path else kind
            layer = Layer(len(layers), name, path, kind, layer_kind)
            layers.append(layer)
        layer.nodes.append(node)
        if kind not in layer.torch_ops:
            layer.torch_ops.append(kind)
        layer.macs += _macs(script, node)
        for o in outs:
            producer[o] = layer
        last_layer = layer

    graph_inputs = [v for v in list(graph.inputs())[1:] if holds_tensor(v.type())]
    graph_outputs = [t for v in graph.outputs() for t in tensor_sources(v)]
    for layer in layers:
        own = set(layer.nodes)
        for node in layer.nodes:
            for v in node.inputs():
                for src in tensor_sources(v):
                    p = src.node()
                    if p in own or p.kind() in ("prim::GetAttr", "prim::Constant") or src in layer.inputs:
                        continue
                    if src in graph_inputs or producer.get(src) is not None:
                        layer.inputs.append(src)
    consumed = {v for layer in layers for v in layer.inputs} | set(graph_outputs)
    for layer in layers:
        for node in layer.nodes:
            for o in node.outputs():
                if o in consumed and o not in layer.outputs:
                    layer.outputs.append(o)
        layer.input_info = [tensor_info(v) for v in layer.inputs]
        layer.output_info = [tensor_info(v) for v in layer.outputs]
    return DeployGraph(script, graph, layers, graph_inputs, graph_outputs, modules, producer)


def _complete_types(script: torch.jit.ScriptModule, graph: Any, inputs: tuple[torch.Tensor, ...]) -> None:
    untyped = [o for node in graph.nodes() for o in node.outputs() if o.type().kind() == "TensorType"
               and (o.type().dtype() is None or o.type().sizes() is None)]
    if not untyped:
        return
    for v, t in zip(untyped, _run_capture(script, graph, untyped, inputs)):
        if isinstance(t, torch.Tensor):
            v.setType(torch._C.TensorType.create_from_tensor(t))


def march_of_script(script: torch.jit.ScriptModule) -> set[str]:
    """Marches named by the qframe operators of a traced model (their first, constant, argument)."""
    found = set()
    for node in script.inlined_graph.nodes():
        if node.kind().startswith("qframe::"):
            first = node.inputsAt(0)
            if first.node().kind() == "prim::Constant":
                try:
                    found.add(str(first.toIValue()))
                except Exception:
                    pass
    return found


def march_of_module(module: nn.Module) -> set[str]:
    """Marches a converted nn.Module records: the fx meta and its integer modules' ``march`` attributes."""
    found = set()
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict) and isinstance(meta.get("qframe_march"), str):
        found.add(meta["qframe_march"])
    for sub in module.modules():
        m = getattr(sub, "march", None)
        if isinstance(m, str) and not isinstance(sub, torch.jit.ScriptModule):
            found.add(m)
    return found


# -- running pieces of the traced graph (per-layer timing) -----------------------------------------
def _value_index(graph: Any) -> dict:
    """value -> ("in", i) or (node position, output position): stable across ``graph.copy()``."""
    index = {v: ("in", i) for i, v in enumerate(graph.inputs())}
    for n_i, node in enumerate(graph.nodes()):
        for o_i, o in enumerate(node.outputs()):
            index[o] = (n_i, o_i)
    return index


def capture(dg: DeployGraph, values: list, inputs: tuple[torch.Tensor, ...]) -> list:
    """Run the traced model once and return the runtime value of each of ``values`` (graph values of ``dg``)."""
    return _run_capture(dg.script, dg.graph, values, inputs)


def _run_capture(script: torch.jit.ScriptModule, graph: Any, values: list, inputs: tuple[torch.Tensor, ...]) -> list:
    index = _value_index(graph)
    copy = graph.copy()
    inputs_c = list(copy.inputs())
    nodes_c = list(copy.nodes())

    def locate(v: Any) -> Any:
        where = index[v]
        return inputs_c[where[1]] if where[0] == "in" else list(nodes_c[where[0]].outputs())[where[1]]

    wanted = [locate(v) for v in values]
    ret = copy.return_node()
    tup = copy.create("prim::TupleConstruct", [*ret.inputs(), *wanted])
    tup.insertBefore(ret)
    tup.output().setType(torch._C.TupleType([v.type() for v in tup.inputs()]))
    ret.removeAllInputs()
    ret.addInput(tup.output())
    fn = torch._C._create_function_from_graph("qframe_capture", copy)
    with torch.no_grad(), quiet_trace():
        out = fn(script._c, *inputs)
    return list(out[len(out) - len(values):])


def layer_function(dg: DeployGraph, layer: Layer) -> tuple[Any, list]:
    """A function running only ``layer``'s ops, and the graph values it takes (its inputs, then any others it
    reads); call it as ``fn(*captured values)``."""
    src = dg.graph
    new = torch._C.Graph()
    env: dict = {}
    self_value = next(iter(src.inputs()))
    env[self_value] = new.addInput("self")
    env[self_value].setType(self_value.type())
    takes: list = []

    def take(v: Any) -> Any:
        nv = new.addInput()
        nv.setType(v.type())
        env[v] = nv
        takes.append(v)
        return nv

    for v in layer.inputs:
        take(v)

    def need(v: Any) -> Any:
        if v in env:
            return env[v]
        node = v.node()
        if node.kind() == "prim::Param" or (dg.producer.get(v) is not None and dg.producer[v] is not layer):
            return take(v)
        for i in node.inputs():
            need(i)
        clone(node)
        return env[v]

    def clone(node: Any) -> None:
        c = new.createClone(node, lambda x: env[x])
        new.insertNode(c)
        for old, nv in zip(node.outputs(), c.outputs()):
            env[old] = nv

    for node in layer.nodes:
        for i in node.inputs():
            need(i)
        clone(node)
    outs = [env[o] for o in layer.outputs] or [env[o] for o in layer.nodes[-1].outputs()]
    if len(outs) == 1:
        new.registerOutput(outs[0])
    else:
        tup = new.create("prim::TupleConstruct", outs)
        new.insertNode(tup)
        tup.output().setType(torch._C.TupleType([o.type() for o in outs]))
        new.registerOutput(tup.output())
    fn = torch._C._create_function_from_graph(f"qframe_layer_{layer.index}", new)
    module = dg.script._c
    return (lambda *args: fn(module, *args)), takes
