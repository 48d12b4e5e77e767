#!/usr/bin/python3
"""PyTorch 1.13 reference values for test/ops-tensor.test.ts: cumsum, prod, std, any/all, sort,
argsort, topk, max/min with indices, flip, split/chunk, tril/triu, scatter_add, index_add,
masked_fill, einsum, bmm, outer, linspace, at their edges (ties, NaN, empty and 0-d inputs,
negative dims, zeros in products).

    /usr/bin/python3 scripts/gen-ops-tensor-fixtures.py test/fixtures/ops-tensor.json

Each case names an op, its inputs (shape, dtype, values) and arguments, and torch's outputs.
Non-finite floats are written as the strings "nan", "inf" and "-inf" (JSON has no NaN).
"""
import json
import sys

import torch
from fixture_utils import enc_number as enc

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(11)
nan, inf = float("nan"), float("inf")

DTYPES = {torch.float64: "float64", torch.float32: "float32", torch.int32: "int32", torch.int64: "int32", torch.bool: "bool"}


def T(t):
    t = t.detach()
    return dict(shape=list(t.shape), dtype=DTYPES[t.dtype], data=[enc(v) for v in t.reshape(-1).tolist()])


def r(*shape):
    return torch.randn(*shape, generator=g)


def ints(lo, hi, *shape):
    """Small integers as float64: many ties."""
    return torch.randint(lo, hi, shape, generator=g).double()


cases = []


def case(name, op, inputs, args=None, **outputs):
    args = {k: enc(v) for k, v in (args or {}).items()}
    cases.append(dict(name=name, op=op, inputs=[T(x) for x in inputs], args=args, out={k: T(v) for k, v in outputs.items()}))


def vi(res):
    return dict(values=res.values, indices=res.indices.int())


# ---- cumsum
x = r(3, 4)
case("cumsum dim 1", "cumsum", [x], dict(dim=1), y=torch.cumsum(x, 1))
case("cumsum negative dim", "cumsum", [x], dict(dim=-2), y=torch.cumsum(x, -2))
case("cumsum 0-d", "cumsum", [torch.tensor(2.5)], dict(dim=0), y=torch.cumsum(torch.tensor(2.5), 0))
case("cumsum empty", "cumsum", [torch.zeros(0, 3)], dict(dim=0), y=torch.cumsum(torch.zeros(0, 3), 0))
xn = torch.tensor([1.0, inf, -inf, 2.0, nan, 3.0])
case("cumsum non-finite", "cumsum", [xn], dict(dim=0), y=torch.cumsum(xn, 0))
xi = torch.tensor([[1, -2, 3], [4, 5, -6]], dtype=torch.int32)
case("cumsum int32", "cumsum", [xi], dict(dim=1), y=torch.cumsum(xi, 1))
xb = torch.tensor([True, False, True, True])
case("cumsum bool", "cumsum", [xb], dict(dim=0), y=torch.cumsum(xb, 0))
x32 = torch.randn(2, 50, generator=g).float()
case("cumsum float32", "cumsum", [x32], dict(dim=1), y=torch.cumsum(x32, 1))

# ---- prod (values and gradients at zeros)
x = r(3, 4)
case("prod dim 1 keepdim", "prod", [x], dict(dim=1, keepdim=True), y=torch.prod(x, 1, keepdim=True))
case("prod all", "prod", [x], dict(), y=torch.prod(x))
case("prod negative dim", "prod", [x], dict(dim=-2), y=torch.prod(x, -2))
case("prod empty", "prod", [torch.zeros(0)], dict(), y=torch.prod(torch.zeros(0)))
case("prod empty dim", "prod", [torch.zeros(2, 0)], dict(dim=1), y=torch.prod(torch.zeros(2, 0), 1))
case("prod 0-d", "prod", [torch.tensor(-3.0)], dict(), y=torch.prod(torch.tensor(-3.0)))
xz = torch.tensor([[2.0, 0.0, 3.0, -1.0], [0.0, 5.0, 0.0, 2.0], [1.5, 2.0, -2.0, 0.5]], requires_grad=True)
w = torch.tensor([0.5, -1.5, 2.0])
(torch.prod(xz, 1) * w).sum().backward()
case("prod grad with zeros", "prodGrad", [xz, w], dict(dim=1), y=torch.prod(xz, 1), grad=xz.grad)
xz2 = torch.tensor([[0.0, 4.0], [3.0, -2.0]], requires_grad=True)
torch.prod(xz2).backward()
case("prod grad all with one zero", "prodGrad", [xz2, torch.tensor(1.0)], dict(), y=torch.prod(xz2), grad=xz2.grad)
xpi = torch.tensor([[2, 3], [-4, 5]], dtype=torch.int32)
case("prod int32", "prod", [xpi], dict(dim=0), y=torch.prod(xpi, 0))

# ---- std
x = r(4, 5)
case("std dim 1", "std", [x], dict(dim=1), y=torch.std(x, 1))
case("std correction 0 keepdim", "std", [x], dict(dim=0, correction=0, keepdim=True), y=torch.std(x, 0, unbiased=False, keepdim=True))
case("std all", "std", [x], dict(), y=torch.std(x))
case("std one element", "std", [torch.tensor([3.0])], dict(), y=torch.std(torch.tensor([3.0])))

# ---- any / all
xa = torch.tensor([[0.0, nan, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, -3.0]])
case("any dim 1", "any", [xa], dict(dim=1), y=torch.any(xa, 1))
case("all dim 1", "all", [xa], dict(dim=1), y=torch.all(xa, 1))
case("any all-dims", "any", [xa], dict(), y=torch.any(xa))
case("all keepdim dim 0", "all", [xa], dict(dim=0, keepdim=True), y=torch.all(xa, 0, keepdim=True))
case("any empty", "any", [torch.zeros(0)], dict(), y=torch.any(torch.zeros(0)))
case("all empty", "all", [torch.zeros(0)], dict(), y=torch.all(torch.zeros(0)))
case("all empty dim", "all", [torch.zeros(2, 0)], dict(dim=1), y=torch.all(torch.zeros(2, 0), 1))
xab = torch.tensor([[True, False], [True, True]])
case("all bool", "all", [xab], dict(dim=1), y=torch.all(xab, 1))

# ---- sort / argsort
xt = ints(0, 4, 3, 9)
case("sort ties", "sort", [xt], dict(dim=-1), **vi(torch.sort(xt, dim=-1, stable=True)))
case("sort ties descending", "sort", [xt], dict(dim=1, descending=True), **vi(torch.sort(xt, dim=1, descending=True, stable=True)))
case("sort dim 0", "sort", [xt], dict(dim=0), **vi(torch.sort(xt, dim=0, stable=True)))
case("sort dim -2 descending", "sort", [xt], dict(dim=-2, descending=True), **vi(torch.sort(xt, dim=-2, descending=True, stable=True)))
xs = torch.tensor([3.0, nan, -inf, 1.0, nan, inf, 1.0, -0.0, 0.0, -2.0])
case("sort NaN", "sort", [xs], dict(), **vi(torch.sort(xs, stable=True)))
case("sort NaN descending", "sort", [xs], dict(descending=True), **vi(torch.sort(xs, descending=True, stable=True)))
case("sort 0-d", "sort", [torch.tensor(4.0)], dict(), **vi(torch.sort(torch.tensor(4.0), stable=True)))
case("sort empty", "sort", [torch.zeros(2, 0)], dict(), **vi(torch.sort(torch.zeros(2, 0), stable=True)))
xsi = torch.tensor([[5, -1, 5, 0, -1, 7]], dtype=torch.int32)
case("sort int32", "sort", [xsi], dict(descending=True), **vi(torch.sort(xsi, descending=True, stable=True)))
xl = ints(0, 10, 2, 37)
case("sort long ties", "sort", [xl], dict(), **vi(torch.sort(xl, stable=True)))
case("argsort descending dim 0", "argsort", [xt], dict(dim=0, descending=True), y=torch.sort(xt, dim=0, descending=True, stable=True).indices.int())

# ---- topk
# torch.topk's order among equal values comes from its selection algorithm (e.g. indices
# [11, 8, 9, 10, 7] for five tied 2s); ours is the stable one, lowest index first, so the expected
# indices are torch's stable sort's and the values are checked to be torch.topk's.


def topk(x, k, dim=-1, largest=True):
    ref = torch.topk(x, k, dim, largest=largest)
    order = torch.sort(x, dim=dim, descending=largest, stable=True).indices.narrow(dim if x.dim() else 0, 0, k) if x.dim() else ref.indices
    values = torch.gather(x, dim, order) if x.dim() else ref.values
    assert torch.equal(values.nan_to_num(123.0), ref.values.nan_to_num(123.0)), (x, k)
    return dict(values=ref.values, indices=order.int())


case("topk ties", "topk", [xt], dict(k=4), **topk(xt, 4))
case("topk smallest dim 0", "topk", [xt], dict(k=2, dim=0, largest=False), **topk(xt, 2, 0, largest=False))
case("topk NaN", "topk", [xs], dict(k=4), **topk(xs, 4))
case("topk NaN smallest", "topk", [xs], dict(k=3, largest=False), **topk(xs, 3, largest=False))
case("topk k 0", "topk", [xt], dict(k=0), **topk(xt, 0))
case("topk full", "topk", [xt], dict(k=9), **topk(xt, 9))
case("topk 0-d", "topk", [torch.tensor(2.0)], dict(k=1), **topk(torch.tensor(2.0), 1))

# ---- max / min with indices
xm = torch.tensor([[1.0, 3.0, 3.0, -1.0], [2.0, nan, 5.0, nan], [-4.0, -4.0, 0.0, -4.0]])
case("max dim ties NaN", "maxWithIndices", [xm], dict(dim=1), **vi(torch.max(xm, 1)))
case("min dim ties NaN", "minWithIndices", [xm], dict(dim=1), **vi(torch.min(xm, 1)))
case("max dim 0 keepdim", "maxWithIndices", [xm], dict(dim=0, keepdim=True), **vi(torch.max(xm, 0, keepdim=True)))
case("min dim -1", "minWithIndices", [xt], dict(dim=-1), **vi(torch.min(xt, -1)))
case("max 0-d", "maxWithIndices", [torch.tensor(7.0)], dict(dim=0), **vi(torch.max(torch.tensor(7.0), 0)))
xg = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], requires_grad=True)
wg = torch.tensor([2.0, -1.0])
(torch.max(xg, 1).values * wg).sum().backward()
case("max dim grad ties", "maxWithIndicesGrad", [xg, wg], dict(dim=1), grad=xg.grad)

# ---- flip
x = r(2, 3, 4)
case("flip dim 0", "flip", [x], dict(dims=[0]), y=torch.flip(x, [0]))
case("flip dims 0,2", "flip", [x], dict(dims=[0, 2]), y=torch.flip(x, [0, 2]))
case("flip negative", "flip", [x], dict(dims=[-1, -2]), y=torch.flip(x, [-1, -2]))
case("flip 0-d", "flip", [torch.tensor(1.5)], dict(dims=[0]), y=torch.flip(torch.tensor(1.5), [0]))
case("flip int32", "flip", [xi], dict(dims=[1]), y=torch.flip(xi, [1]))

# ---- split / chunk
x = r(5, 3)


def parts(ts):
    return {f"p{i}": t for i, t in enumerate(ts)}


case("split size 2", "split", [x], dict(size=2, dim=0), **parts(torch.split(x, 2, 0)))
case("split sections", "split", [x], dict(size=[1, 0, 4], dim=0), **parts(torch.split(x, [1, 0, 4], 0)))
case("split dim -1", "split", [x], dict(size=2, dim=-1), **parts(torch.split(x, 2, -1)))
case("chunk 3", "chunk", [x], dict(chunks=3, dim=0), **parts(torch.chunk(x, 3, 0)))
x6 = r(6)
case("chunk 4 of 6 gives 3", "chunk", [x6], dict(chunks=4), **parts(torch.chunk(x6, 4)))
case("chunk empty", "chunk", [torch.zeros(0)], dict(chunks=3), **parts(torch.chunk(torch.zeros(0), 3)))
case("split empty", "split", [torch.zeros(0)], dict(size=2), **parts(torch.split(torch.zeros(0), 2)))

# ---- tril / triu
x = r(2, 3, 4)
for d in (-1, 0, 2):
    case(f"tril {d}", "tril", [x], dict(diagonal=d), y=torch.tril(x, d))
    case(f"triu {d}", "triu", [x], dict(diagonal=d), y=torch.triu(x, d))
case("triu int32", "triu", [xi], dict(diagonal=1), y=torch.triu(xi, 1))

# ---- scatter_add / index_add / masked_fill
inp = r(3, 5)
idx = torch.tensor([[0, 1, 2, 0, 0], [2, 0, 0, 1, 2]])
src = r(2, 5)
case("scatterAdd dim 0", "scatterAdd", [inp, idx.int(), src], dict(dim=0), y=torch.scatter_add(inp, 0, idx, src))
idx1 = torch.tensor([[4, 4, 0], [1, 2, 1], [0, 0, 0]])
src1 = r(3, 4)
case("scatterAdd dim 1 larger src", "scatterAdd", [inp, idx1.int(), src1], dict(dim=1), y=torch.scatter_add(inp, 1, idx1, src1[:, :3]))
iidx = torch.tensor([2, 0, 2, 2])
source = r(3, 4)
case("indexAdd dim 1 alpha", "indexAdd", [inp, iidx.int(), source], dict(dim=1, alpha=-0.5), y=torch.index_add(inp, 1, iidx, source, alpha=-0.5))
source0 = r(4, 5)
case("indexAdd dim 0", "indexAdd", [inp, iidx.int(), source0], dict(dim=0), y=torch.index_add(inp, 0, iidx, source0))
mask = torch.tensor([True, False, False, True, False])
case("maskedFill broadcast", "maskedFill", [inp, mask], dict(value=-inf), y=inp.masked_fill(mask, -inf))
xmi = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
mask2 = torch.tensor([[True], [False]])
case("maskedFill int32", "maskedFill", [xmi, mask2], dict(value=9), y=xmi.masked_fill(mask2, 9))

# ---- einsum, bmm, outer
A, B, C = r(3, 4), r(4, 5), r(5, 3)
sq = r(4, 4)
bA, bB = r(2, 3, 4), r(2, 4, 5)
e1, e2 = r(2, 1, 3, 4), r(5, 4, 2)
v1, v2 = r(4), r(4)
bil, bl, bx = r(2, 3, 4), r(6, 3), r(6, 4)
cube = r(3, 3, 2)
EINSUM = [
    ("ij,jk->ik", [A, B]),
    ("ij,jk", [A, B]),
    ("bij,bjk->bik", [bA, bB]),
    ("ij->ji", [A]),
    ("ba", [A]),
    ("ij->", [A]),
    ("ii->i", [sq]),
    ("ii", [sq]),
    ("iij->j", [cube]),
    ("i,i->", [v1, v2]),
    ("i,i->i", [v1, v2]),
    ("i,j->ij", [v1, v2]),
    ("ij,jk,ki->", [A, B, C]),
    ("ij,jk,kl->il", [A, B, C]),
    ("bn,anm,bm->ba", [bl, bil, bx]),
    ("...ij,...jk->...ik", [e1, e2]),
    ("...ij->...ji", [e1]),
    ("b...,b...->b", [bA, bA]),
    ("i...->...", [bA]),
    ("ij,ij->ij", [A, A]),
    ("ij,ji->", [A, C[:4, :3].contiguous()]),
    ("i,->i", [v1, torch.tensor(3.0)]),
    ("ab,cd->", [A, sq]),
    ("ij,j", [A, v1]),
    ("Ab,ba->A", [A, A.T.contiguous()]),
    ("ij,kj->ik", [torch.zeros(3, 0), torch.zeros(2, 0)]),
]
for eq_, ops in EINSUM:
    case(f"einsum {eq_}", "einsum", ops, dict(equation=eq_), y=torch.einsum(eq_, *ops))
case("bmm", "bmm", [bA, bB], y=torch.bmm(bA, bB))
vo = r(3)
case("outer", "outer", [v1, vo], y=torch.outer(v1, vo))

# ---- linspace
for dt, name in ((torch.float32, "float32"), (torch.float64, "float64")):
    for start, end, steps in ((0.0, 1.0, 5), (-1.0, 1.0, 7), (3.0, -2.5, 11), (0.1, 0.7, 13), (0.0, 10.0, 1), (0.0, 1.0, 0), (-3.3, 8.1, 100)):
        case(f"linspace {start} {end} {steps} {name}", "linspace", [], dict(start=start, end=end, steps=steps, dtype=name),
             y=torch.linspace(start, end, steps, dtype=dt))

json.dump(dict(torch=torch.__version__, cases=cases), open(sys.argv[1], "w"), allow_nan=False)
print(f"{len(cases)} cases -> {sys.argv[1]}")
