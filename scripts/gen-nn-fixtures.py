#!/usr/bin/python3
"""PyTorch reference values for test/nn.test.ts (BatchNorm, MultiheadAttention, LayerNorm, losses).

    /usr/bin/python3 scripts/gen-nn-fixtures.py test/fixtures/nn/reference.json
"""
import json
import sys

import torch

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(7)


def r(*shape):
    return torch.randn(*shape, generator=g)


def L(t):
    return t.detach().tolist()


out = {}

# BatchNorm1d: two training batches, then eval.
bn = torch.nn.BatchNorm1d(4, momentum=0.2)
with torch.no_grad():
    bn.weight.copy_(torch.tensor([1.0, 0.5, -2.0, 1.5]))
    bn.bias.copy_(torch.tensor([0.0, 0.1, 0.2, -0.3]))
x1, x2, x3 = r(6, 4), r(6, 4), r(3, 4)
y1 = bn(x1)
bn(x2)
bn.eval()
y3 = bn(x3)
out["bn1d"] = dict(momentum=0.2, weight=L(bn.weight), bias=L(bn.bias), x1=L(x1), x2=L(x2), x3=L(x3), y1=L(y1), y3_eval=L(y3),
                   running_mean=L(bn.running_mean), running_var=L(bn.running_var))

# BatchNorm2d with a cumulative average (momentum None).
bn2 = torch.nn.BatchNorm2d(3, momentum=None)
xa, xb = r(2, 3, 2, 2), r(2, 3, 2, 2)
ya = bn2(xa)
bn2(xb)
out["bn2d"] = dict(xa=L(xa), xb=L(xb), ya=L(ya), running_mean=L(bn2.running_mean), running_var=L(bn2.running_var))

# MultiheadAttention, sequence-first and batch-first with a mask.
E, H = 4, 2
mha = torch.nn.MultiheadAttention(E, H)
with torch.no_grad():
    mha.in_proj_weight.copy_(r(3 * E, E) * 0.5)
    mha.in_proj_bias.copy_(r(3 * E) * 0.1)
    mha.out_proj.weight.copy_(r(E, E) * 0.5)
    mha.out_proj.bias.copy_(r(E) * 0.1)
q, k, v = r(3, 2, E), r(5, 2, E), r(5, 2, E)
o, w = mha(q, k, v)
xs = r(2, 3, E)
mask = torch.tensor([[False, True, False], [False, False, True], [True, False, False]])
mha_bf = torch.nn.MultiheadAttention(E, H, batch_first=True)
mha_bf.load_state_dict(mha.state_dict())
o2, w2 = mha_bf(xs, xs, xs, attn_mask=mask)
out["mha"] = dict(E=E, H=H, state={k_: L(v_) for k_, v_ in mha.state_dict().items()}, q=L(q), k=L(k), v=L(v), out=L(o), weights=L(w),
                  xs=L(xs), mask=L(mask), out_bf=L(o2), weights_bf=L(w2))

# LayerNorm and losses.
ln = torch.nn.LayerNorm(5)
with torch.no_grad():
    ln.weight.copy_(r(5))
    ln.bias.copy_(r(5))
xl = r(3, 5)
out["layernorm"] = dict(weight=L(ln.weight), bias=L(ln.bias), x=L(xl), y=L(ln(xl)))
logits, labels = r(4, 3), torch.tensor([0, 2, 1, 2])
out["ce"] = dict(logits=L(logits), labels=L(labels), mean=float(torch.nn.functional.cross_entropy(logits, labels)),
                 ls=float(torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)),
                 none=L(torch.nn.functional.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1)))
a, b = r(2, 3), r(2, 3)
out["mse"] = dict(a=L(a), b=L(b), mean=float(torch.nn.functional.mse_loss(a, b)), sum=float(torch.nn.functional.mse_loss(a, b, reduction="sum")))
out["torch_version"] = torch.__version__

with open(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/nn/reference.json", "w") as f:
    json.dump(out, f, indent=1)
