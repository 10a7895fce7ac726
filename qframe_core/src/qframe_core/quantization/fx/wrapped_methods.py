"""``fx_wrap``-ed calls in the traced model: methods run on a view of their module, and all run in float.

While tracing, a wrapped method records ``wrapped_method_call(owner_path, name, *args)``.
:func:`install_wrapped_methods` then replaces each such node by ``call_method(name)`` on a
:class:`MethodOwnerView` registered in the GraphModule (``_qframe_wrapped_<owner>``), and copies
into the GraphModule the owner's child modules the trace never reached (those only the method
calls), so prepare and convert see them.  The view reads attributes from the GraphModule first —
the method therefore calls the QAT / integer modules once the model is prepared or converted —
and falls back to the original module (plain attributes, methods of its class bound to the view,
containers torch.fx copied only partially).  ``self.training`` is the view's own flag, which
``model.train()``/``eval()`` set as for any submodule, so the method's Python control flow works.

A wrapped function or method runs in float: :func:`dequantize_wrapped_inputs` gives each
quantized value it receives a ``<call>_input_dequant`` DeQuantStub (named like the hybrid
boundaries), so in the integer model it receives float values, never integer codes.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from torch import fx, nn

from ..stubs import DeQuantStub
from .graph_utils import quantized_region, tensor_inputs, unique_module_name


def wrapped_method_call(owner: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Marker target recorded while tracing; :func:`install_wrapped_methods` replaces it."""
    raise RuntimeError(f"internal: the call of wrapped method {owner or '<root>'}.{name} was not installed")


def _is_placeholder(m: Any) -> bool:
    """torch.fx's stand-in for a container it copied only partially (a bare ``nn.Module``)."""
    return type(m) is nn.Module


class MethodOwnerView(nn.Module):
    """Stands for the module (at ``path`` of ``graph_module``) whose wrapped methods the model calls."""

    def __init__(self, graph_module: nn.Module, path: str, original: nn.Module) -> None:
        super().__init__()
        # plain attributes, not submodules: no cycle in modules(), nothing saved twice
        object.__setattr__(self, "_qframe_root", graph_module)
        object.__setattr__(self, "_qframe_path", path)
        object.__setattr__(self, "_qframe_original", original)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        d = self.__dict__
        original = d["_qframe_original"]
        static = inspect.getattr_static(type(original), name, None)
        if isinstance(static, types.FunctionType):
            return types.MethodType(static, self)  # the class's methods see the view as self
        target = f"{d['_qframe_path']}.{name}" if d["_qframe_path"] else name
        try:
            live = d["_qframe_root"].get_submodule(target)
        except AttributeError:
            live = None
        if live is not None and not _is_placeholder(live):
            return live  # a module of the (prepared / converted) model
        value = getattr(original, name)
        if live is not None and isinstance(value, nn.Module):
            return MethodOwnerView(d["_qframe_root"], target, value)
        return value

    def extra_repr(self) -> str:
        return f"view of {self.__dict__['_qframe_path'] or '<root>'} ({type(self.__dict__['_qframe_original']).__name__})"


def _has_module(gm: nn.Module, target: str) -> bool:
    try:
        gm.get_submodule(target)
        return True
    except AttributeError:
        return False


def install_wrapped_methods(gm: fx.GraphModule, root: nn.Module) -> list[str]:
    """Replace the wrapped-method markers of ``gm`` (traced from ``root``); return the copied module paths."""
    copied: list[str] = []
    views: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not wrapped_method_call:
            continue
        owner_path, method, *rest = node.args
        if owner_path not in views:
            owner = root.get_submodule(owner_path) if owner_path else root
            for child, module in owner.named_children():
                target = f"{owner_path}.{child}" if owner_path else child
                if not _has_module(gm, target):
                    gm.add_submodule(target, module)
                    copied.append(target)
            view_name = f"_qframe_wrapped_{owner_path.replace('.', '_') or 'self'}"
            gm.add_submodule(view_name, MethodOwnerView(gm, owner_path, owner))
            views[owner_path] = view_name
        with gm.graph.inserting_before(node):
            new = gm.graph.call_method(method, (gm.graph.get_attr(views[owner_path]), *rest), dict(node.kwargs))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    if views:
        gm.graph.lint()
        gm.recompile()
    return copied


def dequantize_wrapped_inputs(gm: fx.GraphModule) -> list[str]:
    """Insert a DeQuantStub before each quantized input of a wrapped call; return the stubs' names."""
    from .prepare import is_dequant_stub, is_quant_stub

    region = quantized_region(gm, is_quant_stub, is_dequant_stub)
    inserted: list[str] = []
    for node in list(gm.graph.nodes):
        if not node.meta.get("qframe_fx_wrapped"):
            continue
        for value in dict.fromkeys(i for i in tensor_inputs(node) if i in region):
            stub_name = unique_module_name(gm, f"{node.name}_input_dequant")
            gm.add_submodule(stub_name, DeQuantStub())
            with gm.graph.inserting_before(node):
                stub = gm.graph.call_module(stub_name, (value,))
            node.replace_input_with(value, stub)
            inserted.append(stub_name)
    if inserted:
        gm.graph.lint()
        gm.recompile()
    return inserted
