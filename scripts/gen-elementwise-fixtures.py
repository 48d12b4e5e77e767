"""PyTorch 1.13 reference values for test/elementwise-edges.test.ts (float64, CPU).

Run: /usr/bin/python3 scripts/gen-elementwise-fixtures.py > test/fixtures/elementwise/torch-edges.json
NaN and the infinities are written as the strings "nan", "inf" and "-inf".
"""
import json

import torch
import torch.nn.functional as F
from fixture_utils import enc_number

torch.set_default_dtype(torch.float64)
nan, inf = float('nan'), float('inf')


def enc(v):
    # Every number as a float (an integer result of a float op too); booleans stay booleans.
    return v if isinstance(v, bool) else enc_number(float(v))


def lst(t):
    return [enc(v) for v in t.detach().reshape(-1).tolist()]


# Values: specials, zero's neighbourhood, 1's neighbourhood, a log sweep of both signs, op edges.
SPECIAL = [nan, inf, -inf, 0.0, -0.0, 5e-324, 1e-310, -1e-310, 1e-40, -1e-40, 1e-300, -1e-300]
NEAR = [s * 10.0 ** -k for k in range(1, 40, 3) for s in (1, -1)]
NEAR1 = [1 + s * 2.0 ** -k for k in (10, 20, 24, 30, 40, 52) for s in (1, -1)] + [-1 + s * 2.0 ** -k for k in (10, 24, 40) for s in (1, -1)]
SWEEP = [s * 10.0 ** (e / 4) for e in range(-160, 161) for s in (1, -1)]
EDGES = [88.72, 88.73, -87.33, -103.97, -104.5, 709.7, -745.1, 0.625, 3, 6, 10, 13.5, 20.5, -20.5, 26, 30, -30, 40, 0.5, -0.5, 1.5, 2.5, -2.5]
X = SPECIAL + NEAR + NEAR1 + SWEEP + EDGES

unary = {
    'exp': torch.exp, 'expm1': torch.expm1, 'log': torch.log, 'log1p': torch.log1p, 'sqrt': torch.sqrt,
    'rsqrt': torch.rsqrt, 'reciprocal': torch.reciprocal, 'tanh': torch.tanh, 'sigmoid': torch.sigmoid,
    'softplus': F.softplus, 'geluTanh': lambda x: F.gelu(x, approximate='tanh'), 'geluErf': F.gelu,
    'erf': torch.erf, 'sin': torch.sin, 'cos': torch.cos, 'silu': F.silu, 'sign': torch.sign, 'abs': torch.abs,
    'relu': torch.relu, 'floor': torch.floor, 'ceil': torch.ceil, 'round': torch.round, 'square': torch.square,
    'leakyRelu': lambda x: F.leaky_relu(x, 0.2), 'elu': lambda x: F.elu(x, 1.5), 'neg': torch.neg,
}
x = torch.tensor(X)
values = {name: lst(f(x)) for name, f in unary.items()}
params = {'leakyRelu': 0.2, 'elu': 1.5}
predicates = {
    'isnan': lst(torch.isnan(x)), 'isinf': lst(torch.isinf(x)), 'isfinite': lst(torch.isfinite(x)),
    'logicalNot': lst(torch.logical_not(x)), 'bool': lst(x.bool()),
}

# pow over a grid of bases and exponents with every special.
P = [nan, inf, -inf, 0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0, 2.5, -2.5, 1e-40, 1e300]
pa = torch.tensor([a for a in P for _ in P])
pb = torch.tensor([b for _ in P for b in P])
pow_values = {'a': lst(pa), 'b': lst(pb), 'out': lst(torch.pow(pa, pb))}

# Gradients at NaN, at the kinks and at ties (upstream gradient of ones).
G = [nan, 0.0, -0.0, -1.0, 1.0, 0.5, 2.0, -2.5]
grads = {}
for name, f in {
    'abs': torch.abs, 'relu': torch.relu, 'sign': torch.sign, 'leakyRelu': lambda t: F.leaky_relu(t, 0.2),
    'elu': lambda t: F.elu(t, 1.5), 'silu': F.silu, 'clamp': lambda t: torch.clamp(t, 0.0, 1.0),
    'expm1': torch.expm1, 'log1p': torch.log1p, 'floor': torch.floor, 'ceil': torch.ceil, 'round': torch.round,
    'powScalar0': lambda t: torch.pow(t, 0.0), 'powScalar2.5': lambda t: torch.pow(t, 2.5),
}.items():
    # One element at a time: PyTorch's answer at NaN may depend on the vector width of the kernel
    # that runs (elu's float64 backward gives NaN in an 8-wide loop and 1 in its scalar tail).
    out = []
    for v in G:
        t = torch.tensor([v], requires_grad=True)
        f(t).sum().backward()
        out.append(t.grad[0].item())
    grads[name] = {'x': [enc(v) for v in G], 'grad': [enc(v) for v in out]}

PAIRS = [(nan, 1.0), (1.0, nan), (2.0, 2.0), (1.0, 3.0), (3.0, 1.0), (nan, nan), (-0.0, 0.0)]
binary_grads = {}
for name, f in {'maximum': torch.maximum, 'minimum': torch.minimum}.items():
    a = torch.tensor([p[0] for p in PAIRS], requires_grad=True)
    b = torch.tensor([p[1] for p in PAIRS], requires_grad=True)
    f(a, b).sum().backward()
    binary_grads[name] = {'a': lst(a), 'b': lst(b), 'gradA': lst(a.grad), 'gradB': lst(b.grad)}
POW_PAIRS = [(0.0, 0.0), (0.0, 1.0), (0.0, 2.5), (0.0, -1.0), (2.0, 1.0), (1.0, nan), (-2.0, 3.0), (0.0, 0.5), (3.0, 0.0), (2.0, -1.5)]
a = torch.tensor([p[0] for p in POW_PAIRS], requires_grad=True)
b = torch.tensor([p[1] for p in POW_PAIRS], requires_grad=True)
torch.pow(a, b).sum().backward()
binary_grads['pow'] = {'a': lst(a), 'b': lst(b), 'gradA': lst(a.grad), 'gradB': lst(b.grad)}

lse_in = torch.tensor([[-inf, -inf], [1.0, -inf], [inf, 1.0], [nan, 1.0], [2.0, 3.0]])
int_a = torch.tensor([2**30, 65537, 2**31 - 1, -2**31, 123456789, -7], dtype=torch.int32)
int_b = torch.tensor([4, 65537, 1, -1, 987654321, 3], dtype=torch.int32)
ints = {
    'a': int_a.tolist(), 'b': int_b.tolist(), 'mul': (int_a * int_b).tolist(), 'add': (int_a + int_b).tolist(),
    'sub': (int_a - int_b).tolist(), 'square': (int_a * int_a).tolist(),
}
LA = [nan, 0.0, -0.0, 1.0, 2.0, 0.0]
LB = [0.0, nan, 1.0, 0.0, -3.0, 0.0]
la, lb = torch.tensor(LA), torch.tensor(LB)
logical = {
    'a': lst(la), 'b': lst(lb), 'and': lst(torch.logical_and(la, lb)), 'or': lst(torch.logical_or(la, lb)),
    'xor': lst(torch.logical_xor(la, lb)),
}

json.dump({
    'torch': torch.__version__, 'x': lst(x), 'unary': values, 'params': params, 'predicates': predicates,
    'pow': pow_values, 'grads': grads, 'binaryGrads': binary_grads,
    'logsumexp': {'x': [lst(r) for r in lse_in], 'out': lst(torch.logsumexp(lse_in, 1))},
    'int32': ints, 'logical': logical,
}, __import__('sys').stdout)
