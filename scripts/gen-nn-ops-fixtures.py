#!/usr/bin/python3
"""PyTorch 1.13 reference values and gradients for test/ops-nn.test.ts: conv1d, convTranspose2d, conv2d
padding modes, embedding, interpolate, groupNorm, the losses, cosineSimilarity and normalize.

    /usr/bin/python3 scripts/gen-nn-ops-fixtures.py test/fixtures/nn/ops.json

Every case holds float64 inputs (float tensors) and int targets, the op's options as flatgrad
names them, its output, and the gradient of sum(output * r) for a fixed random r (stored too)
with respect to each float input named in `grad`.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from fixture_utils import enc_tensor as enc

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(11)


def r(*shape, scale=1.0):
    return torch.randn(shape, generator=g) * scale


def u(*shape, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(shape, generator=g)


cases = []


def case(name, op, fn, floats, ints=None, opts=None, grad=None):
    """fn(**floats, **ints) -> output; grads of sum(out * proj) for the float inputs named in grad."""
    ints = ints or {}
    grad = list(floats) if grad is None else grad
    leaves = {k: v.clone().requires_grad_(k in grad) for k, v in floats.items()}
    out = fn(**leaves, **ints)
    proj = r(*out.shape)
    grads = torch.autograd.grad((out * proj).sum(), [leaves[k] for k in grad]) if grad else []
    cases.append({
        "name": name, "op": op, "opts": opts or {},
        "floats": {k: enc(v) for k, v in floats.items()},
        "ints": {k: enc(v) for k, v in ints.items()},
        "out": enc(out), "proj": enc(proj),
        "grads": {k: enc(gv) for k, gv in zip(grad, grads)},
    })


# ---- convolutions ----
case("conv1d stride/padding/dilation/groups", "conv1d",
     lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2),
     {"x": r(2, 4, 9), "w": r(6, 2, 3), "b": r(6)}, opts={"stride": 2, "padding": 1, "dilation": 2, "groups": 2})
case("conv1d padding same, even kernel", "conv1d",
     lambda x, w: F.conv1d(x, w, padding="same"), {"x": r(1, 2, 8), "w": r(3, 2, 4)}, opts={"padding": "same"})
case("conv2d padding same, even kernel and dilation", "conv2d",
     lambda x, w, b: F.conv2d(x, w, b, padding="same", dilation=(1, 2)),
     {"x": r(1, 2, 5, 6), "w": r(3, 2, 2, 3), "b": r(3)}, opts={"padding": "same", "dilation": [1, 2]})
case("conv2d padding valid", "conv2d",
     lambda x, w: F.conv2d(x, w, padding="valid"), {"x": r(2, 1, 4, 5), "w": r(2, 1, 3, 2)}, opts={"padding": "valid"})
case("convTranspose2d stride/padding/outputPadding/dilation/groups", "convTranspose2d",
     lambda x, w, b: F.conv_transpose2d(x, w, b, stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2)),
     {"x": r(2, 4, 3, 4), "w": r(4, 3, 3, 2), "b": r(6)},
     opts={"stride": [2, 1], "padding": [1, 0], "outputPadding": [1, 0], "groups": 2, "dilation": [1, 2]})
case("convTranspose2d stride 2, kernel 3, padding 1, outputPadding 1", "convTranspose2d",
     lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
     {"x": r(1, 3, 3, 3), "w": r(3, 2, 3, 3)}, opts={"stride": 2, "padding": 1, "outputPadding": 1})

# ---- embedding, resizing, normalization ----
case("embedding with paddingIdx", "embedding",
     lambda w, idx: F.embedding(idx.long(), w, padding_idx=2),
     {"w": r(7, 3)}, ints={"idx": torch.tensor([[0, 2, 6], [2, 3, 2]])}, opts={"paddingIdx": 2})
case("embedding with negative paddingIdx", "embedding",
     lambda w, idx: F.embedding(idx.long(), w, padding_idx=-1),
     {"w": r(4, 2)}, ints={"idx": torch.tensor([3, 0, 3, 1])}, opts={"paddingIdx": -1})
x_img = r(2, 3, 4, 5)
case("interpolate nearest size", "interpolate", lambda x: F.interpolate(x, size=(7, 3), mode="nearest"),
     {"x": x_img}, opts={"size": [7, 3], "mode": "nearest"})
case("interpolate nearest scaleFactor 1.7", "interpolate", lambda x: F.interpolate(x, scale_factor=1.7, mode="nearest"),
     {"x": x_img}, opts={"scaleFactor": 1.7, "mode": "nearest"})
case("interpolate nearest scaleFactor 2", "interpolate", lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
     {"x": x_img}, opts={"scaleFactor": 2, "mode": "nearest"})
case("interpolate bilinear size", "interpolate", lambda x: F.interpolate(x, size=(6, 8), mode="bilinear", align_corners=False),
     {"x": x_img}, opts={"size": [6, 8], "mode": "bilinear", "alignCorners": False})
case("interpolate bilinear alignCorners", "interpolate", lambda x: F.interpolate(x, size=(7, 3), mode="bilinear", align_corners=True),
     {"x": x_img}, opts={"size": [7, 3], "mode": "bilinear", "alignCorners": True})
case("interpolate bilinear scaleFactor down and up", "interpolate",
     lambda x: F.interpolate(x, scale_factor=(0.6, 1.5), mode="bilinear"),
     {"x": x_img}, opts={"scaleFactor": [0.6, 1.5], "mode": "bilinear"})
case("interpolate bilinear one dim unchanged", "interpolate", lambda x: F.interpolate(x, size=(4, 9), mode="bilinear"),
     {"x": x_img}, opts={"size": [4, 9], "mode": "bilinear"})
case("groupNorm", "groupNorm", lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-5),
     {"x": r(2, 6, 3, 2), "w": r(6), "b": r(6)}, opts={"numGroups": 3, "eps": 1e-5})
case("groupNorm without affine, 3-D", "groupNorm", lambda x: F.group_norm(x, 2, eps=1e-3),
     {"x": r(3, 4, 5)}, opts={"numGroups": 2, "eps": 1e-3})

# ---- classification losses ----
logits = r(6, 4)
labels = torch.tensor([0, 3, -100, 1, 3, 2])
cw = u(4, lo=0.2, hi=2.0)
for red in ["mean", "sum", "none"]:
    case(f"nllLoss weight, ignored -100, {red}", "nllLoss",
         lambda x, w, y, red=red: F.nll_loss(x, y.long(), weight=w, reduction=red),
         {"x": F.log_softmax(logits, 1), "w": cw}, ints={"y": labels}, opts={"reduction": red}, grad=["x"])
case("nllLoss ignoreIndex 3, no weight", "nllLoss", lambda x, y: F.nll_loss(x, y.long(), ignore_index=3),
     {"x": F.log_softmax(logits, 1)}, ints={"y": torch.tensor([0, 3, 1, 1, 3, 2])}, opts={"ignoreIndex": 3})
case("nllLoss [N, C, d1, d2]", "nllLoss", lambda x, y: F.nll_loss(x, y.long()),
     {"x": F.log_softmax(r(2, 3, 2, 2), 1)}, ints={"y": torch.tensor([[[0, 2], [1, -100]], [[2, 2], [0, 1]]])})
case("nllLoss all ignored (mean is NaN)", "nllLoss", lambda x, y: F.nll_loss(x, y.long()),
     {"x": F.log_softmax(r(2, 3), 1)}, ints={"y": torch.tensor([-100, -100])})
for red in ["mean", "sum", "none"]:
    case(f"crossEntropy weight, ignored, smoothing 0.2, {red}", "crossEntropy",
         lambda x, w, y, red=red: F.cross_entropy(x, y.long(), weight=w, reduction=red, label_smoothing=0.2),
         {"x": logits, "w": cw}, ints={"y": labels}, opts={"reduction": red, "labelSmoothing": 0.2}, grad=["x"])
case("crossEntropy weight only", "crossEntropy", lambda x, w, y: F.cross_entropy(x, y.long(), weight=w),
     {"x": logits, "w": cw}, ints={"y": torch.tensor([0, 3, 2, 1, 3, 2])}, grad=["x"])
case("crossEntropy ignoreIndex 0 without weight", "crossEntropy", lambda x, y: F.cross_entropy(x, y.long(), ignore_index=0),
     {"x": logits}, ints={"y": torch.tensor([0, 3, 0, 1, 3, 2])}, opts={"ignoreIndex": 0})
case("crossEntropy plain (fused path)", "crossEntropy", lambda x, y: F.cross_entropy(x, y.long(), label_smoothing=0.1),
     {"x": logits}, ints={"y": torch.tensor([0, 3, 0, 1, 3, 2])}, opts={"labelSmoothing": 0.1})
case("crossEntropy [N, C, d] with ignored", "crossEntropy", lambda x, y: F.cross_entropy(x, y.long()),
     {"x": r(2, 3, 4)}, ints={"y": torch.tensor([[0, 2, -100, 1], [2, 2, 0, 1]])})
case("crossEntropy [N, C, d1, d2] plain (fused path)", "crossEntropy", lambda x, y: F.cross_entropy(x, y.long(), reduction="none"),
     {"x": r(2, 3, 2, 2)}, ints={"y": torch.tensor([[[0, 2], [1, 1]], [[2, 2], [0, 1]]])}, opts={"reduction": "none"})
case("nllLoss [C] with a 0-d target", "nllLoss", lambda x, y: F.nll_loss(x, y.long(), reduction="none"),
     {"x": F.log_softmax(r(4), 0)}, ints={"y": torch.tensor(2)}, opts={"reduction": "none"})

# ---- binary and regression losses ----
p_in, t_in = u(3, 4, lo=0.05, hi=0.95), u(3, 4)
case("binaryCrossEntropy weight, mean", "binaryCrossEntropy", lambda x, t, w: F.binary_cross_entropy(x, t, weight=w),
     {"x": p_in, "t": t_in, "w": u(4, lo=0.5, hi=1.5)}, grad=["x", "t"])
case("binaryCrossEntropy at 0 and 1 (log clamped at -100), sum", "binaryCrossEntropy",
     lambda x, t: F.binary_cross_entropy(x, t, reduction="sum"),
     {"x": torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 1e-30]), "t": torch.tensor([0.0, 1.0, 0.3, 0.6, 0.5, 1.0])},
     opts={"reduction": "sum"}, grad=["x"])
z_in = r(3, 4, scale=4.0)
z_in[0, 0], z_in[1, 1] = 40.0, -40.0
case("binaryCrossEntropyWithLogits weight and posWeight, none", "binaryCrossEntropyWithLogits",
     lambda x, t, w, pw: F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction="none"),
     {"x": z_in, "t": t_in, "w": u(3, 1, lo=0.5, hi=1.5), "pw": u(4, lo=0.5, hi=3.0)}, opts={"reduction": "none"}, grad=["x", "t"])
case("binaryCrossEntropyWithLogits mean", "binaryCrossEntropyWithLogits",
     lambda x, t: F.binary_cross_entropy_with_logits(x, t), {"x": z_in, "t": t_in})
a_in, b_in = r(4, 5), r(4, 5)
case("l1Loss mean", "l1Loss", lambda x, t: F.l1_loss(x, t), {"x": a_in, "t": b_in})
case("l1Loss none", "l1Loss", lambda x, t: F.l1_loss(x, t, reduction="none"), {"x": a_in, "t": b_in}, opts={"reduction": "none"})
case("smoothL1Loss beta 0.5", "smoothL1Loss", lambda x, t: F.smooth_l1_loss(x, t, beta=0.5), {"x": a_in, "t": b_in}, opts={"beta": 0.5})
case("smoothL1Loss beta 0 (l1), sum", "smoothL1Loss", lambda x, t: F.smooth_l1_loss(x, t, beta=0.0, reduction="sum"),
     {"x": a_in, "t": b_in}, opts={"beta": 0, "reduction": "sum"})
case("huberLoss delta 0.7, none", "huberLoss", lambda x, t: F.huber_loss(x, t, delta=0.7, reduction="none"),
     {"x": a_in, "t": b_in}, opts={"delta": 0.7, "reduction": "none"})
lp = F.log_softmax(r(3, 5), 1)
q = F.softmax(r(3, 5), 1)
q[0, 1] = 0.0
for red in ["batchmean", "mean", "sum", "none"]:
    case(f"klDiv {red}", "klDiv", lambda x, t, red=red: F.kl_div(x, t, reduction=red),
         {"x": lp, "t": q}, opts={"reduction": red}, grad=["x"])
case("klDiv logTarget", "klDiv", lambda x, t: F.kl_div(x, t, reduction="batchmean", log_target=True),
     {"x": lp, "t": F.log_softmax(r(3, 5), 1)}, opts={"reduction": "batchmean", "logTarget": True})

# ---- similarity and normalization ----
c1, c2 = r(3, 1, 4), r(2, 4)
c1[1, 0] = 0.0
case("cosineSimilarity broadcast, dim -1, a zero row", "cosineSimilarity",
     lambda x1, x2: F.cosine_similarity(x1, x2, dim=-1), {"x1": c1, "x2": c2}, opts={"dim": -1})
case("cosineSimilarity dim 1, eps 0.5", "cosineSimilarity", lambda x1, x2: F.cosine_similarity(x1, x2, dim=1, eps=0.5),
     {"x1": r(2, 3) * 0.1, "x2": r(2, 3)}, opts={"dim": 1, "eps": 0.5})
n_in = r(3, 4)
n_in[1] = 0.0
case("normalize p 2 dim 1, a zero row", "normalize", lambda x: F.normalize(x), {"x": n_in})
case("normalize p 1 dim 0", "normalize", lambda x: F.normalize(x, p=1, dim=0), {"x": r(3, 4)}, opts={"p": 1, "dim": 0})
case("normalize p 3, eps 0.5", "normalize", lambda x: F.normalize(x, p=3, dim=1, eps=0.5), {"x": r(2, 3) * 0.2}, opts={"p": 3, "eps": 0.5})
case("normalize p inf dim -1", "normalize", lambda x: F.normalize(x, p=math.inf, dim=-1), {"x": r(2, 5)}, opts={"p": "inf", "dim": -1})

with open(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/nn/ops.json", "w") as f:
    json.dump({"torch_version": torch.__version__, "cases": cases}, f, indent=None, separators=(",", ":"))
