"""QConfig and the default configurations of the seeds.

A :class:`QConfig` pairs two factories: one builds the fake-quantize of a
module's output activation (None = high-precision int32 output, allowed for
a conv/linear that is a model output), one builds the weight fake-quantize.
Observers are named (``"min_max"``…) and resolved when the fake-quantize is
built, so importing this module loads no plugin.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs
import torch

from .fake_quantize import FakeQuantize
from .lsq import LSQFakeQuantize

#: fake-quant implementations selectable by name in get_default_qconfig
#: (``"lsq"``: learned step size, see :mod:`qframe_core.quantization.lsq`)
FAKE_QUANT_CLASSES: dict[str, type] = {"fake_quant": FakeQuantize, "lsq": LSQFakeQuantize}


@attrs.frozen
class QConfig:
    """How to quantize one module.

    Attributes:
        activation: factory of the output fake-quantize, or None for a
            high-precision (int32) output.
        weight: factory of the weight fake-quantize, or None for ops without weights.
        kind: ``"calibration"``, ``"qat"`` or None (user-built); prepare refuses
            to mix the two kinds in one model.
    """

    activation: Optional[Callable[..., Any]]
    weight: Optional[Callable[..., Any]]
    kind: Optional[str] = None


def _fake_quant_factory(name: Optional[str], observer: Optional[str], qkwargs: Optional[dict],
                        defaults: dict) -> Optional[Callable[..., Any]]:
    if name is None or observer is None:
        return None
    if name not in FAKE_QUANT_CLASSES:
        raise ValueError(f"unknown fake_quant {name!r}: choose one of {sorted(FAKE_QUANT_CLASSES)} or None")
    # qkwargs may name the observer too (the seeds pass {"observer": FixedScaleObserver, "scale": ...})
    return FAKE_QUANT_CLASSES[name].with_args(**{"observer": observer, **defaults, **(qkwargs or {})})


_ACTIVATION_DEFAULTS = {"dtype": "qint8", "qscheme": torch.per_tensor_symmetric, "ch_axis": -1}
_WEIGHT_DEFAULTS = {"dtype": "qint8", "qscheme": torch.per_channel_symmetric, "ch_axis": 0}


def get_default_qconfig(
    activation_fake_quant: Optional[str] = "fake_quant",
    weight_fake_quant: Optional[str] = "fake_quant",
    activation_observer: Optional[str] = "min_max",
    weight_observer: Optional[str] = "min_max",
    activation_qkwargs: Optional[dict] = None,
    weight_qkwargs: Optional[dict] = None,
    kind: Optional[str] = None,
) -> QConfig:
    """Build a QConfig from names, as the seeds do.

    Activations default to per-tensor qint8, weights to per-output-channel qint8
    (``ch_axis=0``).  ``activation_fake_quant=None`` (or observer None) gives a
    high-precision int32 output.  ``*_fake_quant`` is a key of
    :data:`FAKE_QUANT_CLASSES` (``"fake_quant"`` or ``"lsq"``); ``*_observer`` is a
    registered observer name (``"min_max"``, ``"percentile"``, ``"mse"``, ``"kl"``,
    ``"mix"``, ``"fixed_scale"`` with qframe-observers).  ``*_qkwargs`` go to the
    fake-quantize and its observer, and may override the observer
    (``{"observer": FixedScaleObserver, "scale": 1 / 2 ** 15, "dtype": qint16}``).
    """
    return QConfig(
        activation=_fake_quant_factory(activation_fake_quant, activation_observer, activation_qkwargs,
                                       _ACTIVATION_DEFAULTS),
        weight=_fake_quant_factory(weight_fake_quant, weight_observer, weight_qkwargs, _WEIGHT_DEFAULTS),
        kind=kind,
    )


def get_default_qat_qconfig(**kwargs: Any) -> QConfig:
    return get_default_qconfig(kind="qat", **kwargs)


def get_default_calib_qconfig(**kwargs: Any) -> QConfig:
    return get_default_qconfig(kind="calibration", **kwargs)


def get_default_qat_out_qconfig(**kwargs: Any) -> QConfig:
    """QAT qconfig of a model-output conv/linear: high-precision (int32) output, 8-bit weights."""
    return get_default_qconfig(kind="qat", **{"activation_fake_quant": None, **kwargs})


def get_default_calib_out_qconfig(**kwargs: Any) -> QConfig:
    """Calibration counterpart of :func:`get_default_qat_out_qconfig`."""
    return get_default_qconfig(kind="calibration", **{"activation_fake_quant": None, **kwargs})


default_qat_8bit_fake_quant_qconfig = get_default_qat_qconfig()
default_calib_8bit_fake_quant_qconfig = get_default_calib_qconfig()
default_qat_out_8bit_fake_quant_qconfig = get_default_qat_qconfig(activation_fake_quant=None)
default_calib_out_8bit_fake_quant_qconfig = get_default_calib_qconfig(activation_fake_quant=None)
default_qat_8bit_weight_32bit_out_fake_quant_qconfig = get_default_qat_qconfig(activation_fake_quant=None)
default_calib_8bit_weight_32bit_out_fake_quant_qconfig = get_default_calib_qconfig(activation_fake_quant=None)
#: 16-bit activations, 8-bit weights (bayes: the op table's qint16 rows; bernoulli2 refuses them by rule)
default_calib_16bit_fake_quant_qconfig = get_default_calib_qconfig(activation_qkwargs={"dtype": "qint16"})
default_qat_16bit_fake_quant_qconfig = get_default_qat_qconfig(activation_qkwargs={"dtype": "qint16"})
#: LSQ (learned step size) for activations and weights; see :mod:`qframe_core.quantization.lsq`
default_qat_8bit_lsq_quant_qconfig = get_default_qat_qconfig(activation_fake_quant="lsq", weight_fake_quant="lsq")
default_qat_8bit_weight_32bit_out_lsq_quant_qconfig = get_default_qat_qconfig(activation_fake_quant=None,
                                                                              weight_fake_quant="lsq")
