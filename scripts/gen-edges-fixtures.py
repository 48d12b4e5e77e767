#!/usr/bin/python3
"""PyTorch 1.13 reference values for test/edges.test.ts: avg_pool2d with ceil_mode, count_include_pad
and divisor_override, forward and input gradient, in float64.

    /usr/bin/python3 scripts/gen-edges-fixtures.py test/fixtures/edges/avgpool2d.json

The upstream gradient of case i is the fixed pattern r[j] = ((j * 7) % 11 - 5) / 4 (the test
rebuilds it), so only x, the output and the input gradient are stored.
"""
import itertools
import json
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(11)


def L(t):
    # 15 significant digits keep float64 agreement far below the test's tolerance.
    return [float(f"{v:.15g}") for v in t.detach().reshape(-1).tolist()]


def pattern(n):
    return torch.tensor([((j * 7) % 11 - 5) / 4 for j in range(n)])


def run(x, k, s, p, ceil, cip, div):
    xr = x.clone().requires_grad_(True)
    y = F.avg_pool2d(xr, k, s, p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    (gx,) = torch.autograd.grad((y.reshape(-1) * pattern(y.numel())).sum(), xr)
    return dict(kernelSize=k, stride=s, padding=p, ceilMode=ceil, countIncludePad=cip, divisorOverride=div,
                outShape=list(y.shape), out=L(y), gradX=L(gx))


inputs = {
    # The example: arange(25) as 1x1x5x5, k=2, ceil (PyTorch [3, 5, 6.5, 13, 15, 16.5, ...]).
    "arange": torch.arange(25.0).reshape(1, 1, 5, 5),
    "random": torch.randn(1, 2, 7, 6, generator=g),
}
cases = [dict(input="arange", **run(inputs["arange"], 2, 2, 0, True, True, None))]
geometries = [(2, 2, 0), (2, 2, 1), (3, 2, 1), ([2, 3], [2, 1], [1, 1]), (3, 3, 1), ([3, 2], [1, 3], [0, 1])]
for (k, s, p), ceil, cip, div in itertools.product(geometries, [False, True], [True, False], [None, 3]):
    cases.append(dict(input="random", **run(inputs["random"], k, s, p, ceil, cip, div)))

out = dict(torch=torch.__version__, inputs={k: dict(shape=list(v.shape), data=L(v)) for k, v in inputs.items()}, cases=cases)
with open(sys.argv[1], "w") as f:
    json.dump(out, f, separators=(",", ":"))
print(len(cases), "cases")
