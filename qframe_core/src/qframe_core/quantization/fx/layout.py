"""convert_fx's layout pass: integer activations stay channels-last between the ops that take them.

The march kernels' convs write NHWC natively where they can (see the kernels
README, "Layouts"); returning that as a channels-last tensor saves two copies
per conv, but only consumers written for it may see one: torch's own kernels
for integer dtypes are not all correct on channels-last input (``max_pool2d``
on int8 fails), and user code may ``view`` a tensor.  A module declares that
it reads channels-last input with ``accepts_channels_last``; a module that can
write it has a ``channels_last_output`` attribute, which this pass turns on
when every consumer of its output accepts channels-last (otherwise the module
returns an NCHW-contiguous tensor).  The graph is not changed.
"""

from __future__ import annotations

import builtins

from torch import fx

from .graph_utils import module_of

#: uses that read only metadata: no copy needed
_METADATA_METHODS = ("size", "dim", "numel")
_METADATA_ATTRS = ("shape", "dtype", "device", "ndim")


def _accepts_channels_last(gm: fx.GraphModule, user: fx.Node, value: fx.Node) -> bool:
    if user.op == "call_method" and user.target in _METADATA_METHODS and user.args[0] is value:
        return True
    if user.op == "call_function" and user.target is builtins.getattr and user.args[1] in _METADATA_ATTRS:
        return True
    if user.op not in ("call_module", "call_method"):
        return False
    mod = module_of(gm, user)
    return mod is not None and bool(getattr(mod, "accepts_channels_last", False))


def keep_channels_last(gm: fx.GraphModule) -> list[str]:
    """Enable channels-last outputs on the producers that have them; returns their node names."""
    enabled = []
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_method"):
            continue
        mod = module_of(gm, node)
        if mod is None or not hasattr(mod, "channels_last_output"):
            continue
        if node.users and all(_accepts_channels_last(gm, u, node) for u in node.users):
            mod.channels_last_output = True
            enabled.append(node.name)
    return enabled
