"""The quick-start workflow on the digits CNN, for both marches.

QAT in VALIDATION state must predict the integer model: every layer's
output within 1 LSB (in at most 0.1% of elements), and quantized accuracy
within 1 point of float.
"""

import pytest
import torch

from qframe_core.quickstart import accuracy, run_quickstart
from qframe_core.registry import registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["bernoulli2", "bayes"])
def workflow(request):
    torch.manual_seed(0)
    return run_quickstart(request.param, epochs=10, qat_epochs=1, progress=False)


def test_accuracy_survives_quantization(workflow):
    assert workflow["float_acc"] > 95.0
    assert abs(workflow["quantized_acc"] - workflow["float_acc"]) <= 1.0
    assert abs(workflow["qat_acc"] - workflow["quantized_acc"]) <= 0.5


def test_qat_validation_predicts_the_integer_model_layer_by_layer(workflow):
    similarity = registry.tool("featuremap_similarity").function
    x = torch.cat([b for b, _ in workflow["test_loader"]])
    rows = similarity(workflow["qat_model"], workflow["quantized_model"], (x,), print_table=False)
    names = {r.name for r in rows}
    # conv3 + add + relu fused into the add's generated module, as the seeds name it
    assert {"quant", "conv1", "conv2", "_generated_add_0", "classifier", "dequant"} <= names
    for r in rows:
        if r.max_lsb_diff is not None:
            assert r.max_lsb_diff <= 1.0 + 1e-6, r
            assert r.mismatch_ratio <= 1e-3, r
    final = workflow["qat_model"](x), workflow["quantized_model"](x)
    assert (final[0] - final[1]).abs().max().item() <= workflow["quantized_model"].classifier.out_scale.max().item()


def test_integer_model_passes_integers_between_layers(workflow):
    q = workflow["quantized_model"]
    seen = {}

    def record(name):
        def hook(mod, inputs, output):
            seen[name] = output.dtype
        return hook

    hooks = [getattr(q, n).register_forward_hook(record(n)) for n in ("quant", "conv1", "_generated_add_0", "classifier")]
    q(torch.zeros(2, 1, 8, 8))
    for h in hooks:
        h.remove()
    assert seen == {"quant": torch.int8, "conv1": torch.int8, "_generated_add_0": torch.int8,
                    "classifier": torch.int32}
    assert accuracy(q, workflow["test_loader"]) == workflow["quantized_acc"]
