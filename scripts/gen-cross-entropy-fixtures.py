#!/usr/bin/python3
"""PyTorch 1.13 reference values for test/cross-entropy.test.ts: softmax cross-entropy (no class
weights) with rows labelled ignore_index, with and without label smoothing, every reduction.

    /usr/bin/python3 scripts/gen-cross-entropy-fixtures.py test/fixtures/nn/cross-entropy-ignore.json

Each case holds float64 logits, int labels, the options as flatgrad names them, the output, and
the gradient of sum(output * proj) with respect to the logits for a fixed random proj (stored too).
"""
import json
import sys

import torch
import torch.nn.functional as F
from fixture_utils import enc_tensor as enc

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(1113)


cases = []


def case(name, logits, labels, reduction, smoothing=0.0, ignore_index=-100):
    x = logits.clone().requires_grad_(True)
    out = F.cross_entropy(x, labels.long(), reduction=reduction, label_smoothing=smoothing, ignore_index=ignore_index)
    proj = torch.randn(out.shape, generator=g)
    (grad,) = torch.autograd.grad((out * proj).sum(), [x])
    cases.append({
        "name": name,
        "opts": {"reduction": reduction, "labelSmoothing": smoothing, "ignoreIndex": ignore_index},
        "logits": enc(logits), "labels": enc(labels), "out": enc(out), "proj": enc(proj), "grad": enc(grad),
    })


logits = torch.randn(7, 5, generator=g) * 2
labels = torch.tensor([3, -100, 0, 4, -100, 1, 2])
for reduction in ["mean", "sum", "none"]:
    for smoothing in [0.0, 0.2]:
        case(f"two rows ignored (-100), smoothing {smoothing}, {reduction}", logits, labels, reduction, smoothing)
# ignore_index may name a real class: rows labelled 2 are ignored, the others keep class 2 in the smoothing sum.
for reduction in ["mean", "none"]:
    case(f"ignoreIndex 2 (a real class), smoothing 0.1, {reduction}", logits, torch.tensor([2, 0, 2, 4, 1, 2, 3]), reduction, 0.1, 2)
for reduction in ["mean", "sum"]:
    case(f"every row ignored, smoothing 0.3, {reduction}", logits[:3], torch.tensor([-1, -1, -1]), reduction, 0.3, -1)
# [N, C, d]: the class dim is second; ignored positions are spread over batch and d.
spatial = torch.randn(2, 4, 3, generator=g) * 2
case("[N, C, d] with ignored positions, smoothing 0.15, mean", spatial, torch.tensor([[1, -100, 3], [-100, 0, 2]]), "mean", 0.15)

json.dump({"torch_version": torch.__version__, "cases": cases}, open(sys.argv[1], "w"), indent=None)
print(f"{len(cases)} cases -> {sys.argv[1]}")
