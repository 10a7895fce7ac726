"""advanced.zh.md "Eager Mode 兼容性": the RetinaNet example with ``@fx_warp()`` on a method.

The RetinaNet class is the seed's (imports renamed; the missing ``:`` after
``def _post_process(...)`` in the documentation added).  Its parts are small
modules written here: the seed leaves them to the user.  What the seed states
is checked: the wrapped method keeps its Python control flow (``self.training``,
``if avg_factor == 0``), and modules it calls can have qconfigs and are
replaced by prepare_qat_fx and convert_fx.
"""

from typing import Dict, List, Optional

import torch
from torch import nn

from qframe_core.march import March, set_march
from qframe_core.nn.qat.weighted import Linear as QATLinear
from qframe_core.nn.quantized.weighted import Linear as QuantizedLinear
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig
from qframe_core.utils.fx_helper import wrap as fx_warp

NUM_CLASSES = 3


class RetinaNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        neck: Optional[nn.Module] = None,
        head: Optional[nn.Module] = None,
        anchors: Optional[nn.Module] = None,
        targets: Optional[nn.Module] = None,
        post_process: Optional[nn.Module] = None,
        loss_cls: Optional[nn.Module] = None,
        loss_reg: Optional[nn.Module] = None,
    ):
        super(RetinaNet, self).__init__()

        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchors = anchors
        self.targets = targets
        self.post_process = post_process
        self.loss_cls = loss_cls
        self.loss_reg = loss_reg

    def rearrange_head_out(self, inputs: List[torch.Tensor], num: int):
        outputs = []
        for t in inputs:
            outputs.append(t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, num))
        return torch.cat(outputs, dim=1)

    def forward(self, data: Dict):
        feat = self.backbone(data["img"])
        feat = self.neck(feat) if self.neck else feat
        cls_scores, bbox_preds = self.head(feat)

        if self.post_process is None:
            return cls_scores, bbox_preds

        return self._post_process(data, feat, cls_scores, bbox_preds)

    @fx_warp()  # fx_wrap 支持直接装饰 class method
    def _post_process(self, data, feat, cls_scores, bbox_preds):
        anchors = self.anchors(feat)

        if self.training:
            cls_scores = self.rearrange_head_out(
                cls_scores, self.head.num_classes
            )
            bbox_preds = self.rearrange_head_out(bbox_preds, 4)
            gt_labels = [
                torch.cat(
                    [data["gt_bboxes"][i], data["gt_classes"][i][:, None] + 1],
                    dim=-1,
                )
                for i in range(len(data["gt_classes"]))
            ]
            gt_labels = [gt_label.float() for gt_label in gt_labels]
            _, labels = self.targets(anchors, gt_labels)
            avg_factor = labels["reg_label_mask"].sum()
            if avg_factor == 0:
                avg_factor += 1
            cls_loss = self.loss_cls(
                pred=cls_scores.sigmoid(),
                target=labels["cls_label"],
                weight=labels["cls_label_mask"],
                avg_factor=avg_factor,
            )
            reg_loss = self.loss_reg(
                pred=bbox_preds,
                target=labels["reg_label"],
                weight=labels["reg_label_mask"],
                avg_factor=avg_factor,
            )
            return {
                "cls_loss": cls_loss,
                "reg_loss": reg_loss,
            }
        else:
            preds = self.post_process(
                anchors,
                cls_scores,
                bbox_preds,
                [torch.tensor(shape) for shape in data["resized_shape"]],
            )
            assert (
                "pred_bboxes" not in data.keys()
            ), "pred_bboxes has been in data.keys()"
            data["pred_bboxes"] = preds
            return data


# -- the parts the seed leaves to the user ------------------------------------------------
class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, img):
        x = self.relu(self.conv1(self.quant(img)))
        return [x, self.relu(self.conv2(x))]


class Head(nn.Module):
    num_classes = NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.cls = nn.ModuleList([nn.Conv2d(8, NUM_CLASSES, 1) for _ in range(2)])
        self.reg = nn.ModuleList([nn.Conv2d(8, 4, 1) for _ in range(2)])
        self.dequant = nn.ModuleList([DeQuantStub() for _ in range(4)])

    def forward(self, feats):
        cls = [self.dequant[i](self.cls[i](f)) for i, f in enumerate(feats)]
        reg = [self.dequant[2 + i](self.reg[i](f)) for i, f in enumerate(feats)]
        return cls, reg


class Anchors(nn.Module):
    def forward(self, feats):  # Python over shapes: fine inside the wrapped method
        return torch.cat([torch.zeros(f.shape[2] * f.shape[3], 4) + i for i, f in enumerate(feats)])


class Targets(nn.Module):
    def forward(self, anchors, gt_labels):
        n = anchors.shape[0]
        cls = torch.zeros(len(gt_labels), n, NUM_CLASSES)
        mask = torch.zeros(len(gt_labels), n, 1)
        for b, g in enumerate(gt_labels):
            k = min(len(g), n)
            cls[b, :k, 0] = 1
            mask[b, :k] = 1
        return None, {"cls_label": cls, "cls_label_mask": torch.ones_like(cls), "reg_label": torch.zeros(
            len(gt_labels), n, 4), "reg_label_mask": mask}


class WeightedLoss(nn.Module):
    def forward(self, pred, target, weight, avg_factor):
        return ((pred - target).abs() * weight).sum() / avg_factor


class PostProcess(nn.Module):
    """Refines the scores with its own quantized linear layer (a quantized region of its own)."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.refine = nn.Linear(NUM_CLASSES, NUM_CLASSES)
        self.dequant = DeQuantStub()

    def forward(self, anchors, cls_scores, bbox_preds, shapes):
        scores = cls_scores[0].permute(0, 2, 3, 1)
        return self.dequant(self.refine(self.quant(scores)))


def _model():
    return RetinaNet(Backbone(), None, Head(), Anchors(), Targets(), PostProcess(), WeightedLoss(), WeightedLoss())


def _data():
    return {"img": torch.randn(2, 3, 16, 16), "gt_bboxes": [torch.rand(3, 4), torch.rand(1, 4)],
            "gt_classes": [torch.tensor([0, 1, 2]), torch.tensor([1])], "resized_shape": [(16, 16), (16, 16)]}


def test_retinanet_wrapped_method_keeps_control_flow_and_its_modules_are_prepared():
    torch.manual_seed(0)
    set_march(March.BAYES)
    model = _model()
    qat_model = prepare_qat_fx(model, {"": default_qat_8bit_fake_quant_qconfig})
    assert "_post_process(" in qat_model.code and "rearrange_head_out" not in qat_model.code  # not traced through
    # the module only the method calls was prepared (it has a quantized region of its own)
    assert type(qat_model.post_process.refine) is QATLinear
    assert type(model.post_process.refine) is nn.Linear  # the float model is untouched

    qat_model.train()
    losses = qat_model(_data())
    assert set(losses) == {"cls_loss", "reg_loss"}  # self.training evaluated at run time
    losses["cls_loss"].backward()
    assert qat_model.post_process.refine.weight.grad is None  # not on the training path
    assert qat_model.backbone.conv1.weight.grad is not None

    qat_model.eval()
    set_fake_quantize(qat_model, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for _ in range(3):
            qat_model(_data())
    set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
    data = _data()
    with torch.no_grad():
        out = qat_model(dict(data))
    assert out["pred_bboxes"].shape == (2, 8, 8, NUM_CLASSES)

    quantized = convert_fx(qat_model)
    assert type(quantized.post_process.refine) is QuantizedLinear
    with torch.no_grad():
        q = quantized(dict(data))["pred_bboxes"]
    torch.testing.assert_close(q, out["pred_bboxes"], atol=0, rtol=0)  # integer model == VALIDATION simulation
    assert quantized._qframe_wrapped_self.training is False
