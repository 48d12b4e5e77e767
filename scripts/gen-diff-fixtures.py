#!/usr/bin/python3
"""PyTorch reference cases for test/diff-pytorch.test.ts: every public op of flatgrad, one JSON file per op.

    /usr/bin/python3 scripts/gen-diff-fixtures.py            # writes test/fixtures/diff/<op>.json

Each case holds its inputs, the op's output, the gradient of sum(out * G) for a fixed random upstream
G with respect to every float input, and (for ops that are twice differentiable) the Hessian-vector
product of that same scalar along a random v. Or, when PyTorch raises, only the error. Everything is
computed in float64 from inputs that are exactly representable in float32, so one reference serves the
float32 and the float64 runs; scalar arguments are dyadic for the same reason. The case is run again in
float32, and where PyTorch's float32 results depart from its float64 ones (a derivative that underflows,
a cancellation) they are kept too, under "float32". NaN and infinities are written as the strings
"NaN", "Infinity" and "-Infinity" (JSON has no such numbers).

Adding an op is one `op(...)` entry below (and one entry in the test's OPS table). The names of ops and
arguments are flatgrad's; `fn` says how PyTorch computes the same thing.
"""
import json
import math
import os
import random
import sys
import warnings

import torch
import torch.nn.functional as F

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'diff')
torch.set_default_dtype(torch.float64)
# PyTorch's performance notes (padding='same' with an even kernel copies the input) are not results.
warnings.filterwarnings('ignore', category=UserWarning)

SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e-3]


# ---- input specs: what a case feeds the op ----

def rnd(*shape, lo=-3.0, hi=3.0):
    """A float input of `shape` drawn uniformly from [lo, hi] (rounded to float32)."""
    return ('rand', list(shape), lo, hi)


def val(values, shape=None):
    """A float input with these exact values (shape defaults to 1-D)."""
    return ('values', list(values), list(shape) if shape is not None else [len(values)])


def ints(values, shape=None):
    return ('int', list(values), list(shape) if shape is not None else [len(values)])


def bools(values, shape=None):
    return ('bool', list(values), list(shape) if shape is not None else [len(values)])


# Shapes drawn at random (rank 1-4, dims 1-5), the same on every run: the order of the op
# entries below fixes the sequence of draws.
SHAPES = random.Random(20261129)


def random_shape():
    return [SHAPES.randint(1, 5) for _ in range(SHAPES.randint(1, 4))]


def broadcast_partner(shape):
    """A shape that broadcasts with `shape`: some leading dims dropped, some others set to 1."""
    kept = shape[SHAPES.randint(0, len(shape) - 1):]
    return [1 if SHAPES.random() < 0.4 else d for d in kept]


def const(spec):
    """An input that takes no gradient (PyTorch does not differentiate it, or it is data)."""
    return ('const', spec)


def loss_opts(xs, a, start):
    """Tensor options (weight, posWeight) come as inputs after the first `start`, named by args['tensorOptions']."""
    return dict(zip(a.get('tensorOptions', []), xs[start:]))


def case(name, *inputs, hvp=True, grad=True, **args):
    return dict(name=name, inputs=list(inputs), args=args, hvp=hvp, grad=grad)


OPS = {}


def op(name, fn, cases, hvp=True):
    """fn(inputs, args) -> tensor or tuple of tensors; hvp=False for ops that are not twice differentiable."""
    OPS[name] = dict(fn=fn, cases=cases, hvp=hvp)


# ---- elementwise ----

def unary_cases(lo=-3.0, hi=3.0, specials=SPECIALS, int_case=True):
    cs = [
        case('rand', rnd(3, 4, lo=lo, hi=hi)),
        case('awkward_size', rnd(65, lo=lo, hi=hi)),
        case('random_shape', rnd(*random_shape(), lo=lo, hi=hi)),
        case('scalar_0d', rnd(lo=lo, hi=hi)),
        case('empty', rnd(0, 3, lo=lo, hi=hi)),
        case('nan_inf', val(specials), hvp=False),
    ]
    if int_case:
        cs.append(case('int_input', ints([-3, -1, 0, 2, 5])))
    return cs


def unary(name, fn, lo=-3.0, hi=3.0, extra=(), hvp=True, specials=SPECIALS, int_case=True):
    op(name, lambda xs, a: fn(xs[0]), unary_cases(lo, hi, specials, int_case) + list(extra), hvp=hvp)


unary('neg', torch.neg)
unary('exp', torch.exp)
unary('log', torch.log, 0.2, 3.0, extra=[case('near_one', val([1.0, 1 + 2 ** -20, 1 - 2 ** -20, 1.001, 0.999]))])
unary('sqrt', torch.sqrt, 0.2, 3.0)
unary('rsqrt', torch.rsqrt, 0.2, 3.0)
unary('abs', torch.abs, extra=[case('zero', val([0.0, -0.0, 1.0]))])
unary('sign', torch.sign)
unary('square', torch.square)
unary('reciprocal', torch.reciprocal, 0.2, 3.0)
unary('relu', torch.relu, extra=[case('zero', val([0.0, -0.0, 1.0, -1.0]))])
unary('tanh', torch.tanh, extra=[case('small', val([1e-5, -1e-5, 1e-3, 3e-8, 20.0, -20.0]))])
unary('sigmoid', torch.sigmoid, extra=[case('tails', val([-30.0, -17.5, 17.5, 30.0, 1e-5]))])
unary('softplus', F.softplus, int_case=False, extra=[case('tails', val([-30.0, -17.5, 17.5, 19.5, 20.5, 30.0]))])
unary('sin', torch.sin)
unary('cos', torch.cos)
unary('erf', torch.erf, extra=[case('small', val([1e-5, -1e-5, 1e-3, 3.5, -3.5, 6.0]))])
op('gelu', lambda xs, a: F.gelu(xs[0], approximate=a.get('approximate', 'none')),
   unary_cases(int_case=False) + [case('tanh_approx', rnd(3, 4), approximate='tanh'),
                    case('tanh_approx_nan_inf', val(SPECIALS), approximate='tanh', hvp=False)])

SPECIAL_ROW = val(SPECIALS, [len(SPECIALS), 1])
SPECIAL_COL = val(SPECIALS, [1, len(SPECIALS)])


def binary_cases(lo=-3.0, hi=3.0, blo=None, bhi=None, scalar=0.75):
    blo = lo if blo is None else blo
    bhi = hi if bhi is None else bhi
    shape = random_shape()
    partner = broadcast_partner(shape)
    return [
        case('random_broadcast', rnd(*shape, lo=lo, hi=hi), rnd(*partner, lo=blo, hi=bhi)),
        case('random_broadcast_swapped', rnd(*partner, lo=lo, hi=hi), rnd(*shape, lo=blo, hi=bhi)),
        case('same_shape', rnd(3, 4, lo=lo, hi=hi), rnd(3, 4, lo=blo, hi=bhi)),
        case('broadcast_size1', rnd(3, 1, lo=lo, hi=hi), rnd(1, 4, lo=blo, hi=bhi)),
        case('rank_mismatch', rnd(2, 3, 4, lo=lo, hi=hi), rnd(4, lo=blo, hi=bhi)),
        case('scalar_0d', rnd(lo=lo, hi=hi), rnd(3, lo=blo, hi=bhi)),
        case('both_0d', rnd(lo=lo, hi=hi), rnd(lo=blo, hi=bhi)),
        case('empty', rnd(0, 3, lo=lo, hi=hi), rnd(3, lo=blo, hi=bhi)),
        case('number_right', rnd(3, 4, lo=lo, hi=hi), scalar=scalar, side='right'),
        case('number_left', rnd(3, 4, lo=blo, hi=bhi), scalar=scalar, side='left'),
        case('nan_inf_table', SPECIAL_ROW, SPECIAL_COL, hvp=False),
        case('int_float_promotion', ints([1, -2, 3]), rnd(3, lo=blo, hi=bhi)),
        case('incompatible_shapes', rnd(2, 3), rnd(4)),
    ]


def with_scalar(fn):
    """fn(a, b) where one side may be a Python number given by the case's args."""
    def run(xs, a):
        if 'scalar' in a:
            return fn(xs[0], a['scalar']) if a['side'] == 'right' else fn(torch.tensor(a['scalar']), xs[0])
        return fn(xs[0], xs[1])
    return run


op('add', with_scalar(torch.add), binary_cases())
op('sub', with_scalar(torch.sub), binary_cases())
op('mul', with_scalar(torch.mul), binary_cases())
op('div', with_scalar(torch.div), binary_cases(blo=0.5, bhi=2.0) + [case('int_int_true_division', ints([7, -7, 1]), ints([2, 2, 3]))])
op('pow', with_scalar(torch.pow), binary_cases(lo=0.2, hi=2.0, blo=-2.0, bhi=2.0, scalar=2.5) + [
    case('number_exponent_3', rnd(3, 4), scalar=3.0, side='right'),
    case('number_exponent_half', rnd(3, 4, lo=0.2, hi=3.0), scalar=0.5, side='right'),
    case('number_exponent_edges', val(SPECIALS), scalar=-1.0, side='right', hvp=False),
    case('int_int', ints([2, 3, -2, 0]), ints([2, 0, 3, 5])),
    case('int_negative_exponent', ints([2, 3]), ints([-1, 2])),
])
op('maximum', with_scalar(torch.maximum), [c for c in binary_cases() if not c['name'].startswith('number_')] + [
    case('ties', val([1.0, 2.0, -3.0]), val([1.0, 0.5, -3.0]))])
op('minimum', with_scalar(torch.minimum), [c for c in binary_cases() if not c['name'].startswith('number_')] + [
    case('ties', val([1.0, 2.0, -3.0]), val([1.0, 0.5, -3.0]))])
for _name, _fn in [('eq', torch.eq), ('ne', torch.ne), ('lt', torch.lt), ('le', torch.le), ('gt', torch.gt), ('ge', torch.ge)]:
    op(_name, with_scalar(_fn), [
        case('same_shape_with_ties', val([1.0, 2.0, -3.0, 0.0]), val([1.0, 0.5, -3.0, -0.0])),
        case('broadcast_size1', rnd(3, 1), rnd(1, 4)),
        case('rank_mismatch', rnd(2, 3, 4), rnd(4)),
        case('scalar_0d', rnd(), rnd(3)),
        case('empty', rnd(0, 3), rnd(3)),
        case('number_right', val([0.5, 0.75, 1.0]), scalar=0.75, side='right'),
        case('nan_inf_table', SPECIAL_ROW, SPECIAL_COL),
        case('int_float', ints([1, -2, 3]), val([1.0, -2.5, 3.5])),
        case('incompatible_shapes', rnd(2, 3), rnd(4)),
    ], hvp=False)


def clamp(xs, a):
    return torch.clamp(xs[0], min=a.get('min'), max=a.get('max'))


op('clamp', clamp, [
    case('both', rnd(3, 4), min=-0.5, max=1.25),
    case('min_only', rnd(3, 4), min=-0.5),
    case('max_only', rnd(3, 4), max=1.25),
    case('at_bounds', val([-0.5, 1.25, 0.0, -1.0, 2.0]), min=-0.5, max=1.25),
    case('scalar_0d', rnd(), min=-0.5, max=1.25),
    case('empty', rnd(0, 2), min=-0.5, max=1.25),
    case('nan_inf', val(SPECIALS), min=-0.5, max=1.25, hvp=False),
])


def where(xs, a):
    other = xs[2] if len(xs) > 2 else torch.tensor(a['other'])
    return torch.where(xs[0], xs[1], other)


op('where', where, [
    case('same_shape', bools([1, 0, 1, 1, 0, 0], [2, 3]), rnd(2, 3), rnd(2, 3)),
    case('broadcast', bools([1, 0, 1], [3, 1]), rnd(1, 4), rnd(4)),
    case('scalar_0d', bools([1, 0, 0]), rnd(), rnd(3)),
    case('number_other', bools([1, 0, 1, 0]), rnd(4), other=0.25),
    case('empty', bools([], [0, 2]), rnd(0, 2), rnd(2)),
    case('nan_inf', bools([1, 0] * 5), val(SPECIALS), val(list(reversed(SPECIALS))), hvp=False),
    case('incompatible_shapes', bools([1, 0]), rnd(3), rnd(3)),
])

TORCH_DTYPE = {'int32': torch.int64, 'bool': torch.bool}


def cast(xs, a):
    # 'float' is the dtype under test (the default dtype of the pass).
    return xs[0].to(TORCH_DTYPE.get(a['dtype'], torch.get_default_dtype()))


op('cast', cast, [
    case('float_to_int_truncates', val([-2.75, -0.5, 0.0, 0.5, 2.75, 3.0, -7.0]), dtype='int32'),
    case('float_to_bool', val(SPECIALS), dtype='bool'),
    case('int_to_float', ints([-3, 0, 7, 123456]), dtype='float'),
    case('bool_to_float', bools([1, 0, 1]), dtype='float'),
    case('bool_to_int', bools([1, 0, 1]), dtype='int32'),
    case('float_identity', rnd(2, 3), dtype='float'),
    case('empty', rnd(0, 3), dtype='int32'),
])


# ---- reductions ----

def reduce_cases(empty_reduces=True, specials=True, ties=True):
    cs = [
        case('all', rnd(3, 4)),
        case('dim1', rnd(3, 4), dims=1),
        case('dim_negative', rnd(2, 3, 4), dims=-1),
        case('dims_scattered', rnd(2, 3, 4), dims=[0, 2]),
        case('dims_contiguous_keepdim', rnd(2, 3, 4), dims=[1, 2], keepdim=True),
        case('keepdim', rnd(3, 4), dims=0, keepdim=True),
        case('scalar_0d', rnd()),
        case('scalar_0d_dim', rnd(), dims=0),
        case('empty_other_dim', rnd(0, 3), dims=1),
        case('size1_dim', rnd(3, 1), dims=1),
        case('dim_out_of_range', rnd(3, 4), dims=2),
    ]
    shape = random_shape()
    dims = sorted(SHAPES.sample(range(-len(shape), 0), SHAPES.randint(1, len(shape))))
    cs.append(case('random_shape_dims', rnd(*shape), dims=dims, keepdim=SHAPES.random() < 0.5))
    if empty_reduces:
        cs.append(case('empty_reduced_dim', rnd(0, 3), dims=0))
    if specials:
        cs.append(case('nan_inf', val(SPECIALS[:3] + [1.0, 2.0, -1.0, 0.5, 3.0, -2.0], [3, 3]), dims=1, hvp=False))
    if ties:
        cs.append(case('ties', val([1.0, 3.0, 3.0, -2.0, -2.0, 0.0], [2, 3]), dims=1))
    return cs


def dims_of(a):
    d = a.get('dims')
    return tuple(d) if isinstance(d, list) else d


def red(fn_all, fn_dims):
    def run(xs, a):
        if a.get('dims') is None:
            r = fn_all(xs[0])
            return r.reshape([1] * xs[0].dim()) if a.get('keepdim') else r
        return fn_dims(xs[0], dims_of(a), a.get('keepdim', False))
    return run


op('sum', red(torch.sum, lambda x, d, k: torch.sum(x, d, keepdim=k)), reduce_cases() + [
    case('int_input', ints([1, 2, 3, 4], [2, 2]), dims=1),
    case('repeated_dim', rnd(2, 3), dims=[1, -1])])
op('mean', red(torch.mean, lambda x, d, k: torch.mean(x, d, keepdim=k)), reduce_cases() + [case('int_input', ints([1, 2, 3, 4], [2, 2]), dims=1)])
op('max', red(torch.amax, lambda x, d, k: torch.amax(x, d, keepdim=k)), reduce_cases())
op('min', red(torch.amin, lambda x, d, k: torch.amin(x, d, keepdim=k)), reduce_cases())


def arg_cases():
    return [
        case('all', rnd(3, 4)),
        case('dim1', rnd(3, 4), dim=1),
        case('dim_negative_keepdim', rnd(2, 3, 4), dim=-2, keepdim=True),
        case('scalar_0d', rnd()),
        case('nan_first_wins', val([1.0, math.nan, 3.0, 2.0, 5.0, 1.0], [2, 3]), dim=1),
        case('ties_first_wins', val([1.0, 3.0, 3.0, -2.0, -2.0, 0.0], [2, 3]), dim=1),
        case('empty_other_dim', rnd(0, 3), dim=1),
        case('empty_reduced_dim', rnd(0, 3), dim=0),
        case('dim_out_of_range', rnd(3, 4), dim=-3),
    ]


def argred(fn):
    def run(xs, a):
        if a.get('dim') is None:
            r = fn(xs[0])
            return r.reshape([1] * xs[0].dim()) if a.get('keepdim') else r
        return fn(xs[0], a['dim'], keepdim=a.get('keepdim', False))
    return run


op('argmax', argred(torch.argmax), arg_cases(), hvp=False)
op('argmin', argred(torch.argmin), arg_cases(), hvp=False)


def spread(fn):
    """torch.var or torch.std as flatgrad's variance/std take their arguments (dims, keepdim, correction)."""
    def run(xs, a):
        c = a.get('correction', 1)
        if a.get('dims') is None:
            r = fn(xs[0], dim=None, correction=c)
            return r.reshape([1] * xs[0].dim()) if a.get('keepdim') else r
        return fn(xs[0], dims_of(a), correction=c, keepdim=a.get('keepdim', False))
    return run


op('variance', spread(torch.var), [
    case('all', rnd(3, 4)),
    case('dim1', rnd(3, 4), dims=1),
    case('dims_keepdim_biased', rnd(2, 3, 4), dims=[0, 2], keepdim=True, correction=0),
    case('dim_negative', rnd(2, 3, 4), dims=-1),
    case('single_element_nan', rnd(3, 1), dims=1),
    case('nan_inf', val(SPECIALS[:3] + [1.0, 2.0, -1.0, 0.5, 3.0, -2.0], [3, 3]), dims=1, hvp=False),
    case('dim_out_of_range', rnd(3, 4), dims=5),
])


def logsumexp(xs, a):
    return torch.logsumexp(xs[0], dims_of(a), keepdim=a.get('keepdim', False))


op('logsumexp', logsumexp, [
    case('dim1', rnd(3, 4), dims=1),
    case('dims_keepdim', rnd(2, 3, 4), dims=[0, 2], keepdim=True),
    case('dim_negative', rnd(2, 3, 4), dims=-1),
    case('large_values', val([1000.0, 1000.5, -1000.0, 999.0], [2, 2]), dims=1),
    case('all_neg_inf_row', val([-math.inf, -math.inf, 1.0, 2.0], [2, 2]), dims=1, hvp=False),
    case('nan_inf', val(SPECIALS[:3] + [1.0, 2.0, -1.0, 0.5, 3.0, -2.0], [3, 3]), dims=1, hvp=False),
    case('empty_other_dim', rnd(0, 3), dims=1),
    case('dim_out_of_range', rnd(3, 4), dims=2),
])


def norm(xs, a):
    return torch.linalg.vector_norm(xs[0])


op('norm', norm, [
    case('matrix', rnd(3, 4)),
    case('scalar_0d', rnd()),
    case('empty', rnd(0, 3), hvp=False, grad=False),
    case('nan_inf', val(SPECIALS[1:]), hvp=False),
])


def softmax_cases():
    return [
        case('dim1', rnd(3, 4), dim=1),
        case('dim0', rnd(3, 4), dim=0),
        case('middle_dim', rnd(2, 3, 4), dim=1),
        case('dim_negative', rnd(2, 3, 4), dim=-1),
        case('scalar_0d', rnd(), dim=0),
        case('empty', rnd(0, 3), dim=1),
        case('large_values', val([1000.0, 1000.5, -1000.0, 999.0], [2, 2]), dim=1),
        case('neg_inf_entries', val([-math.inf, 0.0, 1.0, -math.inf, -math.inf, -math.inf], [2, 3]), dim=1, hvp=False),
        case('nan_inf', val(SPECIALS[:3] + [1.0, 2.0, -1.0, 0.5, 3.0, -2.0], [3, 3]), dim=1, hvp=False),
        case('dim_out_of_range', rnd(3, 4), dim=2),
        case('int_input', ints([1, 2, 3, 4], [2, 2]), dim=1),
    ]


op('softmax', lambda xs, a: torch.softmax(xs[0], a['dim']), softmax_cases())
op('logSoftmax', lambda xs, a: torch.log_softmax(xs[0], a['dim']), softmax_cases())


# ---- shape ops ----

op('reshape', lambda xs, a: xs[0].reshape(a['shape']), [
    case('rank_change', rnd(2, 3, 4), shape=[4, 6]),
    case('infer', rnd(2, 3, 4), shape=[-1, 4]),
    case('to_0d', rnd(1, 1), shape=[]),
    case('from_0d', rnd(), shape=[1, 1]),
    case('empty', rnd(0, 3), shape=[3, 0, 2]),
    case('empty_infer', rnd(0, 3), shape=[-1, 3]),
    case('two_minus_ones', rnd(2, 3), shape=[-1, -1]),
    case('size_mismatch', rnd(2, 3), shape=[4, 2]),
], hvp=True)
op('flatten', lambda xs, a: torch.flatten(xs[0], a.get('startDim', 0), a.get('endDim', -1)), [
    case('all', rnd(2, 3, 4)),
    case('middle', rnd(2, 3, 4, 2), startDim=1, endDim=2),
    case('negative_dims', rnd(2, 3, 4), startDim=-2),
    case('scalar_0d', rnd()),
    case('start_after_end', rnd(2, 3, 4), startDim=2, endDim=1),
])
op('squeeze', lambda xs, a: xs[0].squeeze() if a.get('dim') is None else xs[0].squeeze(a['dim']), [
    case('all', rnd(1, 3, 1, 2)),
    case('dim', rnd(1, 3, 1, 2), dim=2),
    case('dim_negative', rnd(3, 1), dim=-1),
    case('not_size1_keeps', rnd(3, 2), dim=1),
    case('scalar_0d', rnd(), dim=0),
    case('dim_out_of_range', rnd(3, 2), dim=2),
])
op('unsqueeze', lambda xs, a: xs[0].unsqueeze(a['dim']), [
    case('front', rnd(3, 2), dim=0),
    case('end_negative', rnd(3, 2), dim=-1),
    case('scalar_0d', rnd(), dim=0),
    case('dim_out_of_range', rnd(3, 2), dim=3),
])
op('permute', lambda xs, a: xs[0].permute(a['dims']), [
    case('rank3', rnd(2, 3, 4), dims=[2, 0, 1]),
    case('negative', rnd(2, 3, 4), dims=[-1, -3, -2]),
    case('empty', rnd(0, 3, 2), dims=[1, 2, 0]),
    case('repeated_axis', rnd(2, 3), dims=[0, 0]),
])
op('transpose', lambda xs, a: xs[0].transpose(a['dim0'], a['dim1']), [
    case('matrix', rnd(3, 4), dim0=0, dim1=1),
    case('negative', rnd(2, 3, 4), dim0=-1, dim1=-3),
    case('scalar_0d', rnd(), dim0=0, dim1=-1),
    case('vector', rnd(3), dim0=0, dim1=0),
    case('dim_out_of_range', rnd(3, 4), dim0=0, dim1=2),
])
op('expand', lambda xs, a: xs[0].expand(a['shape']), [
    case('size1', rnd(3, 1), shape=[3, 4]),
    case('new_leading_keep', rnd(3, 1), shape=[2, -1, 4]),
    case('from_0d', rnd(), shape=[2, 3]),
    case('to_empty', rnd(1, 3), shape=[0, 3]),
    case('bad_dim', rnd(3, 2), shape=[3, 4]),
    case('minus_one_new_dim', rnd(3, 1), shape=[-1, 3, 4]),
])
op('broadcastTo', lambda xs, a: torch.broadcast_to(xs[0], a['shape']), [
    case('size1', rnd(3, 1), shape=[2, 3, 4]),
    case('from_0d', rnd(), shape=[2]),
    case('bad_shape', rnd(3, 2), shape=[2, 3]),
])


def slice_(xs, a):
    # movedim checks the dim as torch does (an out-of-range dim raises IndexError).
    moved = xs[0].movedim(a['dim'], 0)
    return moved[a.get('start'):a.get('end'):a.get('step', 1)].movedim(0, a['dim'])


op('slice', slice_, [
    case('range', rnd(5, 3), dim=0, start=1, end=4),
    case('step', rnd(3, 7), dim=1, start=0, end=7, step=3),
    case('negative_bounds', rnd(3, 7), dim=-1, start=-4, end=-1),
    case('clamped', rnd(3, 4), dim=1, start=2, end=100),
    case('to_empty', rnd(3, 4), dim=1, start=3, end=1),
    case('dim_out_of_range', rnd(3, 4), dim=2, start=0, end=1),
])
op('narrow', lambda xs, a: xs[0].narrow(a['dim'], a['start'], a['length']), [
    case('middle', rnd(3, 6), dim=1, start=2, length=3),
    case('negative_start', rnd(5, 2), dim=0, start=-3, length=2),
    case('zero_length', rnd(3, 4), dim=1, start=1, length=0),
    case('too_long', rnd(3, 4), dim=1, start=2, length=3),
])
op('concat', lambda xs, a: torch.cat(xs, a.get('dim', 0)), [
    case('dim0', rnd(2, 3), rnd(1, 3), rnd(3, 3)),
    case('dim_negative', rnd(2, 3), rnd(2, 1), dim=-1),
    case('with_empty', rnd(2, 3), rnd(0, 3)),
    case('single', rnd(2, 3), dim=1),
    case('scalars_0d', rnd(), rnd()),
    case('shape_mismatch', rnd(2, 3), rnd(2, 4), dim=0),
])
op('stack', lambda xs, a: torch.stack(xs, a.get('dim', 0)), [
    case('dim0', rnd(2, 3), rnd(2, 3)),
    case('last', rnd(2, 3), rnd(2, 3), rnd(2, 3), dim=-1),
    case('scalars_0d', rnd(), rnd()),
    case('shape_mismatch', rnd(2, 3), rnd(3, 2)),
])
op('pad', lambda xs, a: F.pad(xs[0], a['pads'], value=a.get('value', 0.0)), [
    case('last_dim', rnd(2, 3), pads=[1, 2]),
    case('two_dims_value', rnd(2, 3), pads=[0, 1, 2, 0], value=-1.5),
    case('empty', rnd(0, 2), pads=[1, 1, 1, 0]),
    case('odd_pads', rnd(2, 3), pads=[1, 2, 3]),
    case('negative_crops', rnd(3, 4), pads=[-1, 1, 0, -2]),
])
op('clone', lambda xs, a: xs[0].clone(), [case('matrix', rnd(2, 3)), case('scalar_0d', rnd()), case('nan_inf', val(SPECIALS), hvp=False)])


# ---- linear algebra ----

op('matmul', lambda xs, a: torch.matmul(xs[0], xs[1]), [
    case('matrix_matrix', rnd(3, 4), rnd(4, 5)),
    case('vector_vector', rnd(4), rnd(4)),
    case('matrix_vector', rnd(3, 4), rnd(4)),
    case('vector_matrix', rnd(4), rnd(4, 2)),
    case('batch_broadcast', rnd(2, 1, 3, 4), rnd(3, 4, 2)),
    case('batch_vector', rnd(2, 3, 4), rnd(4)),
    case('awkward', rnd(7, 9), rnd(9, 5)),
    case('empty_inner', rnd(2, 0), rnd(0, 3)),
    case('empty_vectors', rnd(0), rnd(0)),
    case('empty_outer', rnd(0, 3), rnd(3, 2)),
    case('empty_batch', rnd(0, 2, 3), rnd(3, 4)),
    case('nan_inf', val([math.nan, 1.0, math.inf, 2.0], [2, 2]), rnd(2, 2), hvp=False),
    case('inner_mismatch', rnd(3, 4), rnd(3, 4)),
    case('scalar_0d', rnd(), rnd(3)),
])
op('mm', lambda xs, a: torch.matmul(xs[0].transpose(-2, -1) if a.get('transA') else xs[0], xs[1].transpose(-2, -1) if a.get('transB') else xs[1]), [
    case('plain', rnd(3, 4), rnd(4, 5)),
    case('transA', rnd(4, 3), rnd(4, 5), transA=True),
    case('transB', rnd(3, 4), rnd(5, 4), transB=True),
    case('both_batched', rnd(2, 4, 3), rnd(2, 5, 4), transA=True, transB=True),
    case('inner_mismatch', rnd(3, 4), rnd(5, 4)),
])
op('linear', lambda xs, a: F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None), [
    case('bias', rnd(2, 3), rnd(4, 3), rnd(4)),
    case('no_bias', rnd(2, 3), rnd(4, 3)),
    case('batch_dims', rnd(2, 3, 3), rnd(4, 3), rnd(4)),
    case('vector_input', rnd(3), rnd(4, 3), rnd(4)),
    case('empty_batch', rnd(0, 3), rnd(4, 3), rnd(4)),
    case('features_mismatch', rnd(2, 5), rnd(4, 3)),
])


# ---- nn ----

def cross_entropy(xs, a):
    o = loss_opts(xs, a, 2)
    return F.cross_entropy(xs[0], xs[1], weight=o.get('weight'), ignore_index=a.get('ignoreIndex', -100),
                           reduction=a.get('reduction', 'mean'), label_smoothing=a.get('labelSmoothing', 0.0))


op('crossEntropy', cross_entropy, [
    case('mean', rnd(4, 5), ints([0, 4, 2, 2])),
    case('sum_smoothing', rnd(4, 5), ints([1, 0, 3, 4]), reduction='sum', labelSmoothing=0.25),
    case('none', rnd(3, 2), ints([1, 0, 1]), reduction='none'),
    case('large_logits', val([1000.0, -1000.0, 0.0, 50.0, 49.0, -3.0], [2, 3]), ints([1, 0])),
    case('large_logits_close', val([1000.0, 1000.5, 999.0, 1001.0, -500.0, -499.25, -501.0, -500.5], [2, 4]), ints([2, 1]), reduction='sum'),
    case('neg_inf_logit', val([-math.inf, 0.0, 1.0, 2.0, -math.inf, 0.5], [2, 3]), ints([1, 0]), hvp=False),
    case('empty_batch_mean_nan', rnd(0, 3), ints([]), hvp=False),
    case('label_out_of_range', rnd(2, 3), ints([0, 3])),
    case('labels_shape_mismatch', rnd(2, 3), ints([0, 1, 2])),
    case('smoothing_above_one', rnd(2, 3), ints([0, 1]), labelSmoothing=1.5),
    case('weight_ignore', rnd(4, 3), ints([0, 2, -100, 1]), const(rnd(3, lo=0.5, hi=2.0)), tensorOptions=['weight']),
    case('weight_smoothing', rnd(3, 4), ints([3, 0, 1]), const(rnd(4, lo=0.5, hi=2.0)), labelSmoothing=0.2, tensorOptions=['weight']),
    case('spatial', rnd(2, 3, 2), ints([0, 2, 1, 1], [2, 2])),
    case('ignore_index_custom', rnd(3, 3), ints([2, 1, 0]), ignoreIndex=1, reduction='sum'),
])
op('oneHot', lambda xs, a: F.one_hot(xs[0], a['numClasses']), [
    case('vector', ints([0, 2, 1, 2]), numClasses=3),
    case('matrix', ints([0, 1, 3, 2], [2, 2]), numClasses=4),
    case('scalar_0d', ints([1], []), numClasses=2),
    case('empty', ints([], [0]), numClasses=3),
    case('out_of_range', ints([0, 3]), numClasses=3),
    case('negative', ints([0, -1]), numClasses=3),
], hvp=False)
op('gather', lambda xs, a: torch.gather(xs[0], a['dim'], xs[1]), [
    case('dim1', rnd(3, 4), ints([0, 3, 1, 1, 2, 0], [3, 2]), dim=1),
    case('dim0_repeats', rnd(3, 2), ints([2, 2, 0, 2], [2, 2]), dim=0),
    case('dim_negative', rnd(2, 3, 2), ints([1, 0, 2, 2, 0, 1, 0, 1], [2, 2, 2]), dim=-2),
    case('empty_index', rnd(3, 4), ints([], [3, 0]), dim=1),
    case('negative_index', rnd(3, 4), ints([0, -1, 1, 1, 2, 0], [3, 2]), dim=1),
    case('out_of_range', rnd(3, 4), ints([0, 4, 1, 1, 2, 0], [3, 2]), dim=1),
])
op('indexSelect', lambda xs, a: torch.index_select(xs[0], a['dim'], xs[1]), [
    case('dim0_repeats', rnd(3, 4), ints([2, 0, 2]), dim=0),
    case('dim_negative', rnd(2, 3, 4), ints([3, 1]), dim=-1),
    case('empty_index', rnd(3, 4), ints([]), dim=1),
    case('out_of_range', rnd(3, 4), ints([0, 3]), dim=0),
    case('negative_index', rnd(3, 4), ints([0, -1]), dim=0),
    case('index_2d', rnd(3, 4), ints([0, 1, 1, 0], [2, 2]), dim=0),
])


def conv2d(xs, a):
    return F.conv2d(xs[0], xs[1], xs[2] if len(xs) > 2 else None, stride=a.get('stride', 1), padding=a.get('padding', 0),
                    dilation=a.get('dilation', 1), groups=a.get('groups', 1))


op('conv2d', conv2d, [
    case('bias', rnd(1, 2, 5, 5), rnd(3, 2, 3, 3), rnd(3)),
    case('stride_padding', rnd(2, 2, 5, 4), rnd(3, 2, 3, 2), stride=2, padding=1),
    case('rect_stride_dilation', rnd(1, 1, 7, 6), rnd(2, 1, 2, 3), stride=[1, 2], dilation=2),
    case('groups', rnd(1, 4, 4, 4), rnd(6, 2, 3, 3), rnd(6), groups=2, padding=1),
    case('nan_inf', val([1.0, math.nan, 0.5, -1.0, 2.0, math.inf, 0.0, -0.5, 1.5, 0.25, -2.0, 1.0, 3.0, -1.0, 0.5, 2.0], [1, 1, 4, 4]),
         rnd(2, 1, 2, 2), hvp=False),
    case('empty_batch', rnd(0, 2, 4, 4), rnd(3, 2, 3, 3), rnd(3)),
    case('same', rnd(1, 2, 5, 4), rnd(2, 2, 2, 3), rnd(2), padding='same'),
    case('same_dilation', rnd(1, 1, 6, 6), rnd(1, 1, 3, 3), padding='same', dilation=2),
    case('valid', rnd(1, 1, 4, 4), rnd(1, 1, 3, 3), padding='valid'),
    case('channel_mismatch', rnd(1, 3, 5, 5), rnd(2, 2, 3, 3)),
    case('too_small', rnd(1, 1, 2, 2), rnd(1, 1, 3, 3)),
])


def pool_kwargs(a, dilation=True):
    k = dict(kernel_size=a['kernelSize'], stride=a.get('stride'), padding=a.get('padding', 0), ceil_mode=a.get('ceilMode', False))
    if dilation:
        k['dilation'] = a.get('dilation', 1)
    return k


op('maxPool2d', lambda xs, a: F.max_pool2d(xs[0], **pool_kwargs(a)), [
    case('k2', rnd(1, 2, 4, 6), kernelSize=2),
    case('k3_s2_pad1', rnd(2, 1, 5, 5), kernelSize=3, stride=2, padding=1),
    case('dilation', rnd(1, 1, 7, 7), kernelSize=2, dilation=2),
    case('ceil_mode', rnd(1, 1, 5, 5), kernelSize=2, ceilMode=True),
    case('rect', rnd(1, 1, 4, 6), kernelSize=[2, 3], stride=[1, 2]),
    case('nan_in_window', val([1.0, math.nan, 3.0, 2.0, -math.inf, 0.0, 1.0, math.inf, 0.5, 0.25, 0.0, -1.0, 2.0, 2.0, -3.0, 4.0], [1, 1, 4, 4]), kernelSize=2, hvp=False),
    case('padding_too_large', rnd(1, 1, 5, 5), kernelSize=2, padding=2),
], hvp=True)


def avg_pool(xs, a):
    return F.avg_pool2d(xs[0], **pool_kwargs(a, dilation=False), count_include_pad=a.get('countIncludePad', True),
                        divisor_override=a.get('divisorOverride'))


op('avgPool2d', avg_pool, [
    case('k2', rnd(1, 2, 4, 6), kernelSize=2),
    case('k3_s2_pad1', rnd(2, 1, 5, 5), kernelSize=3, stride=2, padding=1),
    case('ceil_mode', val(list(range(25)), [1, 1, 5, 5]), kernelSize=2, ceilMode=True),
    case('ceil_mode_padding', rnd(1, 1, 6, 6), kernelSize=3, stride=2, padding=1, ceilMode=True),
    case('rect', rnd(1, 1, 4, 6), kernelSize=[2, 3], stride=[1, 2]),
    case('nan_in_window', val([1.0, math.nan, 3.0, 2.0, -math.inf, 0.0, 1.0, math.inf, 0.5, 0.25, 0.0, -1.0, 2.0, 2.0, -3.0, 4.0], [1, 1, 4, 4]), kernelSize=2, hvp=False),
    case('exclude_pad', rnd(1, 1, 5, 5), kernelSize=3, stride=2, padding=1, countIncludePad=False),
    case('divisor_override', rnd(1, 2, 4, 4), kernelSize=2, divisorOverride=3),
    case('ceil_exclude_pad', rnd(1, 1, 6, 6), kernelSize=3, stride=2, padding=1, ceilMode=True, countIncludePad=False),
    case('padding_too_large', rnd(1, 1, 5, 5), kernelSize=2, padding=2),
])
op('adaptiveAvgPool2d', lambda xs, a: F.adaptive_avg_pool2d(xs[0], a['outputSize']), [
    case('global', rnd(2, 3, 4, 5), outputSize=1),
    case('divides', rnd(1, 2, 4, 6), outputSize=[2, 3]),
])
op('dropout', lambda xs, a: F.dropout(xs[0], p=a['p'], training=a.get('training', True)), [
    case('p0_training', rnd(3, 4), p=0.0),
    case('eval', rnd(3, 4), p=0.5, training=False),
    case('nan_inf_p0', val(SPECIALS), p=0.0, hvp=False),
    case('p_out_of_range', rnd(3), p=1.5),
])


def layer_norm(xs, a):
    return F.layer_norm(xs[0], a['normalizedShape'], xs[1] if len(xs) > 1 else None, xs[2] if len(xs) > 2 else None, eps=a.get('eps', 1e-5))


op('layerNorm', layer_norm, [
    case('last_dim', rnd(3, 5), normalizedShape=[5]),
    case('affine', rnd(2, 3, 4), rnd(4), rnd(4), normalizedShape=[4]),
    case('two_dims_affine', rnd(2, 3, 4), rnd(3, 4), rnd(3, 4), normalizedShape=[3, 4], eps=0.5),
    case('nan_row', val([math.nan, 1.0, 2.0, 1.0, 2.0, 3.5], [2, 3]), normalizedShape=[3], hvp=False),
    case('empty_batch', rnd(0, 4), normalizedShape=[4]),
    case('shape_mismatch', rnd(3, 5), normalizedShape=[4]),
    # The fused kernels' corners: a normalized dim of one (the output is the bias), rows holding
    # an infinity (NaN throughout), rows far from 0 (a float32 running sum loses their low bits),
    # longer rows (the SIMD tails and, on a GPU, a workgroup per row), and no columns at all.
    # (eps 0.25 makes rstd exactly 2, so that PyTorch's x * a + (b - mean * a) has no rounding to show.)
    case('size_one_dim', rnd(4, 1), rnd(1), rnd(1), normalizedShape=[1], eps=0.25),
    case('inf_rows', val([1.0, math.inf, 2.0, 1.0, 2.0, 3.5, -math.inf, 0.0, 0.0], [3, 3]), normalizedShape=[3], hvp=False),
    case('offset_rows', rnd(3, 70, lo=100.0, hi=104.0), rnd(70), rnd(70), normalizedShape=[70]),
    case('zero_width', rnd(3, 0), normalizedShape=[0]),
])


# ---- creation (no inputs: values only) ----

# arange infers its dtype as torch does: all-integer arguments give integers.
op('arange', lambda xs, a: torch.arange(a['start'], a['end'], a['step']), [
    case('unit', start=0, end=5, step=1),
    case('fractional', start=-1.0, end=1.0, step=0.25),
    case('descending', start=3, end=-2, step=-1.5),
    case('empty', start=2, end=2, step=1),
    case('zero_step', start=0, end=3, step=0),
], hvp=False)
op('eye', lambda xs, a: torch.eye(a['n'], a.get('m', a['n'])), [case('square', n=3), case('rect', n=2, m=4), case('empty', n=0)], hvp=False)
op('full', lambda xs, a: torch.full(a['shape'], a['value']), [case('matrix', shape=[2, 3], value=-1.25), case('scalar_0d', shape=[], value=2.5),
                                                               case('empty', shape=[0, 2], value=1.0), case('negative_dim', shape=[2, -1], value=0.0)], hvp=False)


# ---- more elementwise, reductions, sorting, shape, indexing, nn and losses ----

unary('expm1', torch.expm1, extra=[case('small', val([1e-5, -1e-5, 1e-3, 3e-8, -30.0, 80.0]))])
unary('log1p', torch.log1p, -0.9, 3.0, extra=[case('small', val([1e-5, -1e-5, 1e-3, 3e-8, -1.0, -0.999]))])
unary('silu', F.silu, int_case=False)
for _name, _fn in [('floor', torch.floor), ('ceil', torch.ceil), ('round', torch.round)]:
    unary(_name, _fn, extra=[case('halves', val([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999998, 1e7 + 1, -3.0]))])
for _name, _fn in [('isnan', torch.isnan), ('isinf', torch.isinf), ('isfinite', torch.isfinite), ('logicalNot', torch.logical_not)]:
    op(_name, lambda xs, a, _fn=_fn: _fn(xs[0]), [
        case('nan_inf', val(SPECIALS)),
        case('rand', rnd(3, 4)),
        case('scalar_0d', rnd()),
        case('empty', rnd(0, 3)),
        case('int_input', ints([-3, 0, 2])),
        case('bool_input', bools([1, 0, 1])),
    ], hvp=False)
op('leakyRelu', lambda xs, a: F.leaky_relu(xs[0], a.get('negativeSlope', 0.01)),
   unary_cases(int_case=False) + [case('slope', rnd(3, 4), negativeSlope=0.25), case('zero', val([0.0, -0.0, 1.0, -1.0]))])
op('elu', lambda xs, a: F.elu(xs[0], a.get('alpha', 1.0)),
   unary_cases(int_case=False) + [case('alpha', rnd(3, 4), alpha=0.5), case('zero', val([0.0, -0.0, 1e-5, -1e-5]))])
for _name, _fn in [('logicalAnd', torch.logical_and), ('logicalOr', torch.logical_or), ('logicalXor', torch.logical_xor)]:
    op(_name, with_scalar(_fn), [
        case('bools_broadcast', bools([1, 0, 1], [3, 1]), bools([1, 0], [1, 2])),
        case('floats_nan_inf', SPECIAL_ROW, SPECIAL_COL),
        case('int_float', ints([0, -2, 3]), val([0.0, 0.5, -0.0])),
        case('scalar_0d', rnd(), rnd(3)),
        case('empty', rnd(0, 3), rnd(3)),
        case('incompatible_shapes', rnd(2, 3), rnd(4)),
    ], hvp=False)

op('prod', red(torch.prod, lambda x, d, k: torch.prod(x, d, keepdim=k) if isinstance(d, int) else _prod_dims(x, d, k)),
   [case('all', rnd(3, 4, lo=0.5, hi=1.5)),
    case('dim1', rnd(3, 4), dims=1),
    case('dim_negative_keepdim', rnd(2, 3, 4), dims=-1, keepdim=True),
    case('one_zero', val([1.5, 0.0, -2.0, 3.0, 0.5, 2.0], [2, 3]), dims=1),
    case('two_zeros', val([0.0, 0.0, -2.0, 3.0, 0.5, 2.0], [2, 3]), dims=1),
    case('scalar_0d', rnd()),
    case('empty_reduced_dim', rnd(0, 3), dims=0),
    case('nan_inf', val(SPECIALS[:3] + [1.0, 2.0, -1.0, 0.5, 3.0, -2.0], [3, 3]), dims=1, hvp=False),
    case('int_input', ints([1, 2, 3, 4], [2, 2]), dims=1),
    case('dim_out_of_range', rnd(3, 4), dims=2)])


def _prod_dims(x, dims, keepdim):
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = torch.prod(x, d, keepdim=keepdim)
    return x


op('std', spread(torch.std), [
    case('all', rnd(3, 4)),
    case('dim1', rnd(3, 4), dims=1),
    case('dims_keepdim_biased', rnd(2, 3, 4), dims=[0, 2], keepdim=True, correction=0),
    case('constant_row', val([1.0, 1.0, 1.0, 2.0, -1.0, 0.5], [2, 3]), dims=1, hvp=False),
    case('nan_inf', val(SPECIALS[:3] + [1.0, 2.0, -1.0, 0.5, 3.0, -2.0], [3, 3]), dims=1, hvp=False),
    case('dim_out_of_range', rnd(3, 4), dims=5),
])
for _name, _fn in [('any', torch.any), ('all', torch.all)]:
    op(_name, red(_fn, lambda x, d, k, _fn=_fn: _fn(x, d, keepdim=k)), [
        case('all_elements', val([0.0, 1.0, 0.0, 0.0], [2, 2])),
        case('dim1', val([0.0, 1.0, 0.0, 0.0, 2.0, -1.0], [2, 3]), dims=1),
        case('keepdim', val([0.0, 1.0, 0.0, 0.0, 2.0, -1.0], [2, 3]), dims=0, keepdim=True),
        case('nan_counts_true', val([math.nan, 0.0, -0.0, math.inf], [2, 2]), dims=1),
        case('bool_input', bools([1, 1, 0, 1], [2, 2]), dims=1),
        case('empty', rnd(0, 3), dims=0),
        case('scalar_0d', rnd()),
    ], hvp=False)
op('cumsum', lambda xs, a: torch.cumsum(xs[0], a['dim']), [
    case('dim1', rnd(3, 4), dim=1),
    case('dim0', rnd(3, 4), dim=0),
    case('dim_negative', rnd(2, 3, 4), dim=-2),
    case('scalar_0d', rnd(), dim=0),
    case('empty', rnd(0, 3), dim=0),
    case('nan_inf', val(SPECIALS), dim=0, hvp=False),
    case('int_input', ints([1, 2, 3, 4], [2, 2]), dim=1),
    case('dim_out_of_range', rnd(3, 4), dim=2),
])


def sort_(xs, a):
    r = torch.sort(xs[0], dim=a.get('dim', -1), descending=a.get('descending', False), stable=True)
    return r.values, r.indices


op('sort', sort_, [
    case('last_dim', rnd(3, 5)),
    case('dim0_descending', rnd(4, 3), dim=0, descending=True),
    case('ties_stable', val([2.0, 1.0, 2.0, 1.0, 3.0, 2.0]), hvp=False),
    case('ties_stable_descending', val([2.0, 1.0, 2.0, 1.0, 3.0, 2.0]), descending=True, hvp=False),
    case('nan_inf', val(SPECIALS[:5] + [2.0, -3.0]), hvp=False),
    case('scalar_0d', rnd(), dim=0),
    case('empty', rnd(0, 3), dim=1),
    case('dim_out_of_range', rnd(3, 4), dim=2),
])
op('argsort', lambda xs, a: torch.sort(xs[0], dim=a.get('dim', -1), descending=a.get('descending', False), stable=True).indices, [
    case('last_dim', rnd(3, 5)),
    case('dim0_descending', rnd(4, 3), dim=0, descending=True),
    case('ties_stable', val([2.0, 1.0, 2.0, 1.0, 3.0, 2.0])),
    case('nan_inf', val(SPECIALS[:5] + [2.0, -3.0])),
    case('dim_out_of_range', rnd(3, 4), dim=2),
], hvp=False)


def topk(xs, a):
    r = torch.topk(xs[0], a['k'], dim=a.get('dim', -1), largest=a.get('largest', True))
    return r.values, r.indices


op('topk', topk, [
    case('largest', rnd(3, 6), k=2),
    case('smallest_dim0', rnd(5, 3), k=3, dim=0, largest=False),
    case('k_zero', rnd(3, 4), k=0),
    case('k_all', rnd(2, 4), k=4),
    case('nan_largest', val([1.0, math.nan, 3.0, -math.inf, 2.0]), k=2, hvp=False),
    case('k_too_large', rnd(3, 4), k=5),
])


def extreme(fn):
    def run(xs, a):
        r = fn(xs[0], a['dim'], keepdim=a.get('keepdim', False))
        return r.values, r.indices
    return run


for _name, _fn in [('maxWithIndices', torch.max), ('minWithIndices', torch.min)]:
    op(_name, extreme(_fn), [
        case('dim1', rnd(3, 4), dim=1),
        case('dim_negative_keepdim', rnd(2, 3, 4), dim=-2, keepdim=True),
        case('scalar_0d', rnd(), dim=0),
        case('nan', val([1.0, math.nan, 3.0, 2.0, 5.0, 1.0], [2, 3]), dim=1, hvp=False),
        case('empty_other_dim', rnd(0, 3), dim=1),
        case('empty_reduced_dim', rnd(0, 3), dim=0),
        case('dim_out_of_range', rnd(3, 4), dim=2),
    ])

op('flip', lambda xs, a: torch.flip(xs[0], a['dims'] if isinstance(a['dims'], list) else [a['dims']]), [
    case('one_dim', rnd(3, 4), dims=1),
    case('two_dims', rnd(2, 3, 4), dims=[0, -1]),
    case('size1_dim', rnd(1, 3), dims=0),
    case('scalar_0d', rnd(), dims=[]),
    case('empty', rnd(0, 3), dims=[0, 1]),
    case('dim_out_of_range', rnd(3, 4), dims=2),
])
op('split', lambda xs, a: torch.split(xs[0], a['sizeOrSections'], a.get('dim', 0)), [
    case('even', rnd(6, 2), sizeOrSections=2),
    case('uneven_last', rnd(2, 7), sizeOrSections=3, dim=-1),
    case('sections', rnd(5, 2), sizeOrSections=[1, 0, 4]),
    case('sections_bad_sum', rnd(5, 2), sizeOrSections=[1, 2]),
])
op('chunk', lambda xs, a: torch.chunk(xs[0], a['chunks'], a.get('dim', 0)), [
    case('even', rnd(6, 2), chunks=3),
    case('uneven', rnd(2, 7), chunks=3, dim=1),
    case('more_chunks_than_size', rnd(2, 3), chunks=5, dim=1),
    case('zero_chunks', rnd(2, 3), chunks=0),
])
op('bmm', lambda xs, a: torch.bmm(xs[0], xs[1]), [
    case('batch', rnd(2, 3, 4), rnd(2, 4, 5)),
    case('empty_inner', rnd(2, 3, 0), rnd(2, 0, 2)),
    case('batch_mismatch', rnd(2, 3, 4), rnd(3, 4, 5)),
    case('rank2', rnd(3, 4), rnd(4, 5)),
])
op('outer', lambda xs, a: torch.outer(xs[0], xs[1]), [
    case('vectors', rnd(3), rnd(4)),
    case('empty', rnd(0), rnd(4)),
    case('nan_inf', val(SPECIALS[:4]), val([0.0, 1.0, -2.0]), hvp=False),
    case('matrix', rnd(2, 2), rnd(3)),
])
for _name, _fn in [('tril', torch.tril), ('triu', torch.triu)]:
    op(_name, lambda xs, a, _fn=_fn: _fn(xs[0], a.get('diagonal', 0)), [
        case('square', rnd(4, 4)),
        case('rect_diag_pos', rnd(3, 5), diagonal=1),
        case('batched_diag_neg', rnd(2, 3, 4), diagonal=-1),
        case('nan_inf', val(SPECIALS[:9], [3, 3]), hvp=False),
        case('int_input', ints(list(range(9)), [3, 3])),
        case('vector', rnd(3)),
    ])
op('scatterAdd', lambda xs, a: torch.scatter_add(xs[0], a['dim'], xs[1], xs[2]), [
    case('dim1_repeats', rnd(3, 4), ints([0, 0, 3, 1, 1, 1, 2, 0, 2], [3, 3]), rnd(3, 3), dim=1),
    case('dim0_fewer_rows', rnd(3, 2), ints([2, 0], [1, 2]), rnd(1, 2), dim=0),
    case('dim_negative', rnd(2, 3), ints([2, 2, 0, 1], [2, 2]), rnd(2, 2), dim=-1),
    case('out_of_range', rnd(3, 4), ints([0, 4], [1, 2]), rnd(1, 2), dim=1),
])
op('indexAdd', lambda xs, a: torch.index_add(xs[0], a['dim'], xs[1], xs[2], alpha=a.get('alpha', 1)), [
    case('dim0_repeats', rnd(3, 4), ints([2, 0, 2]), rnd(3, 4), dim=0),
    case('dim_negative_alpha', rnd(2, 3), ints([1, 1]), rnd(2, 2), dim=-1, alpha=-0.5),
    case('out_of_range', rnd(3, 4), ints([3]), rnd(1, 4), dim=0),
])


def masked_fill(xs, a):
    return xs[0].masked_fill(xs[1], a['value'] if 'value' in a else xs[2])


op('maskedFill', masked_fill, [
    case('same_shape', rnd(2, 3), bools([1, 0, 0, 1, 1, 0], [2, 3]), value=-1.5),
    case('broadcast_mask', rnd(2, 3), bools([0, 1, 1], [3]), value=0.25),
    case('neg_inf', rnd(2, 2), bools([1, 0, 0, 1], [2, 2]), value=-math.inf, hvp=False),
    case('tensor_value', rnd(2, 3), bools([1, 0, 0, 1, 1, 0], [2, 3]), rnd()),
    case('mask_larger', rnd(3), bools([1, 0, 0, 1, 1, 0], [2, 3]), value=1.0),
])
op('einsum', lambda xs, a: torch.einsum(a['equation'], *xs), [
    case('matmul', rnd(2, 3), rnd(3, 4), equation='ij,jk->ik'),
    case('batch_trace_like', rnd(2, 3, 3), equation='bii->b'),
    case('outer_implicit', rnd(3), rnd(2), equation='i,j'),
    case('three_operands', rnd(2, 3), rnd(3, 4), rnd(4), equation='ij,jk,k->i'),
    case('transpose_sum', rnd(2, 3, 4), equation='abc->cb'),
    case('bad_dims', rnd(2, 3), rnd(4, 4), equation='ij,jk->ik'),
])
op('linspace', lambda xs, a: torch.linspace(a['start'], a['end'], a['steps']), [
    case('unit', start=0.0, end=1.0, steps=5),
    case('descending', start=3.0, end=-2.0, steps=4),
    case('one_step', start=2.0, end=5.0, steps=1),
    case('zero_steps', start=0.0, end=1.0, steps=0),
    case('negative_steps', start=0.0, end=1.0, steps=-1),
], hvp=False)
op('embedding', lambda xs, a: F.embedding(xs[0], xs[1], padding_idx=a.get('paddingIdx')), [
    case('matrix_indices', ints([0, 2, 2, 1], [2, 2]), rnd(3, 4)),
    case('padding_idx', ints([0, 2, 1, 2]), rnd(3, 2), paddingIdx=2),
    case('padding_idx_negative', ints([0, 2, 1]), rnd(3, 2), paddingIdx=-1),
    case('scalar_index', ints([1], []), rnd(3, 2)),
    case('empty_indices', ints([], [0]), rnd(3, 2)),
    case('out_of_range', ints([0, 3]), rnd(3, 2)),
])
op('conv1d', lambda xs, a: F.conv1d(xs[0], xs[1], xs[2] if len(xs) > 2 else None, stride=a.get('stride', 1), padding=a.get('padding', 0),
                                     dilation=a.get('dilation', 1), groups=a.get('groups', 1)), [
    case('bias', rnd(2, 2, 7), rnd(3, 2, 3), rnd(3)),
    case('stride_padding_dilation', rnd(1, 2, 9), rnd(2, 2, 2), stride=2, padding=1, dilation=2),
    case('same', rnd(1, 2, 6), rnd(2, 2, 4), padding='same'),
    case('groups', rnd(1, 4, 5), rnd(2, 2, 3), groups=2),
    case('channel_mismatch', rnd(1, 3, 5), rnd(2, 2, 3)),
    case('same_with_stride', rnd(1, 2, 6), rnd(2, 2, 3), padding='same', stride=2),
])


def conv_t(xs, a):
    return F.conv_transpose2d(xs[0], xs[1], xs[2] if len(xs) > 2 else None, stride=a.get('stride', 1), padding=a.get('padding', 0),
                              output_padding=a.get('outputPadding', 0), dilation=a.get('dilation', 1), groups=a.get('groups', 1))


op('convTranspose2d', conv_t, [
    case('bias', rnd(1, 2, 3, 3), rnd(2, 3, 2, 2), rnd(3)),
    case('stride_padding_output_padding', rnd(2, 2, 3, 2), rnd(2, 1, 3, 3), stride=2, padding=1, outputPadding=1),
    case('dilation_groups', rnd(1, 4, 3, 3), rnd(4, 1, 2, 2), dilation=2, groups=2),
    case('channel_mismatch', rnd(1, 3, 3, 3), rnd(2, 1, 2, 2)),
    case('output_padding_too_large', rnd(1, 1, 3, 3), rnd(1, 1, 2, 2), stride=2, outputPadding=2),
])


def interpolate(xs, a):
    kw = dict(mode=a.get('mode', 'nearest'))
    if 'size' in a:
        kw['size'] = a['size']
    if 'scaleFactor' in a:
        kw['scale_factor'] = a['scaleFactor']
    if 'alignCorners' in a:
        kw['align_corners'] = a['alignCorners']
    return F.interpolate(xs[0], **kw)


op('interpolate', interpolate, [
    case('nearest_size', rnd(1, 2, 3, 4), size=[5, 7]),
    case('nearest_scale', rnd(1, 1, 3, 3), scaleFactor=2),
    case('nearest_down', rnd(1, 1, 5, 6), size=[2, 4]),
    case('bilinear_size', rnd(2, 1, 3, 4), size=[5, 6], mode='bilinear'),
    case('bilinear_align_corners', rnd(1, 2, 3, 3), size=[4, 5], mode='bilinear', alignCorners=True),
    case('bilinear_scale_fraction', rnd(1, 1, 4, 4), scaleFactor=1.5, mode='bilinear'),
    case('no_size', rnd(1, 1, 3, 3)),
])
op('groupNorm', lambda xs, a: F.group_norm(xs[0], a['numGroups'], xs[1] if len(xs) > 1 else None, xs[2] if len(xs) > 2 else None, eps=a.get('eps', 1e-5)), [
    case('plain', rnd(2, 4, 3), numGroups=2),
    case('affine_4d', rnd(2, 6, 2, 2), rnd(6), rnd(6), numGroups=3),
    case('one_group_eps', rnd(1, 3, 4), rnd(3), rnd(3), numGroups=1, eps=0.5),
    case('groups_do_not_divide', rnd(2, 4, 3), numGroups=3),
])
op('normalize', lambda xs, a: F.normalize(xs[0], p=a.get('p', 2.0), dim=a.get('dim', 1), eps=a.get('eps', 1e-12)), [
    case('rows', rnd(3, 4)),
    case('dim0_p1', rnd(3, 4), p=1.0, dim=0),
    case('zero_row_eps', val([0.0, 0.0, 3.0, 4.0], [2, 2]), hvp=False),
    case('dim_negative_3d', rnd(2, 3, 4), dim=-1),
])
op('cosineSimilarity', lambda xs, a: F.cosine_similarity(xs[0], xs[1], dim=a.get('dim', 1), eps=a.get('eps', 1e-8)), [
    case('rows', rnd(3, 4), rnd(3, 4)),
    case('broadcast_dim0', rnd(3, 2), rnd(3, 1), dim=0),
    case('dim_negative', rnd(2, 3, 4), rnd(2, 3, 4), dim=-1),
    case('shape_mismatch', rnd(3, 4), rnd(2, 4)),
])


def nll(xs, a):
    o = loss_opts(xs, a, 2)
    return F.nll_loss(xs[0], xs[1], weight=o.get('weight'), ignore_index=a.get('ignoreIndex', -100), reduction=a.get('reduction', 'mean'))


op('nllLoss', nll, [
    case('mean', rnd(4, 3), ints([0, 2, 1, 2])),
    case('weight_ignore', rnd(4, 3), ints([0, 2, -1, 2]), const(rnd(3, lo=0.5, hi=2.0)), ignoreIndex=-1, tensorOptions=['weight']),
    case('sum_spatial', rnd(2, 3, 2), ints([0, 2, 1, 1], [2, 2]), reduction='sum'),
    case('none', rnd(3, 2), ints([1, 0, 1]), reduction='none'),
    case('all_ignored_mean_nan', rnd(2, 3), ints([1, 1]), ignoreIndex=1, hvp=False),
    case('out_of_range', rnd(2, 3), ints([0, 3])),
])




def bce(xs, a):
    o = loss_opts(xs, a, 2)
    return F.binary_cross_entropy(xs[0], xs[1], weight=o.get('weight'), reduction=a.get('reduction', 'mean'))


op('binaryCrossEntropy', bce, [
    case('mean', rnd(3, 4, lo=0.05, hi=0.95), const(rnd(3, 4, lo=0.0, hi=1.0))),
    case('weight_sum', rnd(2, 3, lo=0.05, hi=0.95), const(rnd(2, 3, lo=0.0, hi=1.0)), const(rnd(3, lo=0.5, hi=2.0)), reduction='sum', tensorOptions=['weight']),
    case('saturated_probs', val([0.0, 1.0, 1e-8, 1.0 - 2 ** -24]), const(val([0.0, 1.0, 1.0, 0.0])), reduction='none', hvp=False),
    case('input_out_of_range', val([1.5, 0.5]), const(val([1.0, 0.0]))),
    case('shape_mismatch', rnd(3, lo=0.1, hi=0.9), const(rnd(4, lo=0.0, hi=1.0))),
])


def bce_logits(xs, a):
    o = loss_opts(xs, a, 2)
    return F.binary_cross_entropy_with_logits(xs[0], xs[1], weight=o.get('weight'), pos_weight=o.get('posWeight'), reduction=a.get('reduction', 'mean'))


op('binaryCrossEntropyWithLogits', bce_logits, [
    case('mean', rnd(3, 4), const(rnd(3, 4, lo=0.0, hi=1.0))),
    case('pos_weight', rnd(2, 3), const(rnd(2, 3, lo=0.0, hi=1.0)), const(rnd(3, lo=0.5, hi=2.0)), reduction='sum', tensorOptions=['posWeight']),
    case('weight_and_pos_weight', rnd(2, 3), const(rnd(2, 3, lo=0.0, hi=1.0)), const(rnd(2, 3, lo=0.5, hi=2.0)), const(rnd(3, lo=0.5, hi=2.0)),
         reduction='none', tensorOptions=['weight', 'posWeight']),
    case('large_logits', val([100.0, -100.0, 30.0, -30.0]), const(val([1.0, 0.0, 0.0, 1.0])), reduction='none'),
    case('shape_mismatch', rnd(3), const(rnd(4, lo=0.0, hi=1.0))),
])
op('l1Loss', lambda xs, a: F.l1_loss(xs[0], xs[1], reduction=a.get('reduction', 'mean')), [
    case('mean', rnd(3, 4), rnd(3, 4)),
    case('sum_ties', val([1.0, 2.0, -3.0]), val([1.0, 0.5, -3.0]), reduction='sum'),
    case('none', rnd(2, 3), rnd(2, 3), reduction='none'),
    case('empty_mean_nan', rnd(0), rnd(0), hvp=False, grad=False),
])
op('smoothL1Loss', lambda xs, a: F.smooth_l1_loss(xs[0], xs[1], reduction=a.get('reduction', 'mean'), beta=a.get('beta', 1.0)), [
    case('mean', rnd(3, 4), rnd(3, 4)),
    case('beta_sum', rnd(3, 4), rnd(3, 4), beta=0.5, reduction='sum'),
    case('beta_zero_is_l1', rnd(2, 3), rnd(2, 3), beta=0.0, reduction='none'),
    case('negative_beta', rnd(2), rnd(2), beta=-1.0),
])
op('huberLoss', lambda xs, a: F.huber_loss(xs[0], xs[1], reduction=a.get('reduction', 'mean'), delta=a.get('delta', 1.0)), [
    case('mean', rnd(3, 4), rnd(3, 4)),
    case('delta_none', rnd(3, 4), rnd(3, 4), delta=0.5, reduction='none'),
    case('zero_delta', rnd(2), rnd(2), delta=0.0),
])
op('klDiv', lambda xs, a: F.kl_div(xs[0], xs[1], reduction=a.get('reduction', 'mean'), log_target=a.get('logTarget', False)), [
    case('mean', rnd(3, 4, lo=-3.0, hi=-0.1), rnd(3, 4, lo=0.0, hi=1.0)),
    case('batchmean', rnd(3, 4, lo=-3.0, hi=-0.1), rnd(3, 4, lo=0.0, hi=1.0), reduction='batchmean'),
    case('zero_target', rnd(4, lo=-3.0, hi=-0.1), val([0.0, 0.5, 0.0, 0.25]), reduction='sum', hvp=False),
    case('log_target', rnd(2, 3, lo=-3.0, hi=-0.1), rnd(2, 3, lo=-3.0, hi=-0.1), logTarget=True, reduction='none'),
    case('shape_mismatch', rnd(3), rnd(2)),
])

op('zeros', lambda xs, a: torch.zeros(a['shape']), [case('matrix', shape=[2, 3]), case('scalar_0d', shape=[]), case('empty', shape=[0, 2]),
                                                    case('negative_dim', shape=[-1])], hvp=False)
op('ones', lambda xs, a: torch.ones(a['shape']), [case('matrix', shape=[2, 3]), case('scalar_0d', shape=[]), case('empty', shape=[0, 2]),
                                                  case('negative_dim', shape=[-1])], hvp=False)
op('zerosLike', lambda xs, a: torch.zeros_like(xs[0]), [case('float', rnd(2, 3)), case('int', ints([1, 2])), case('scalar_0d', rnd())], hvp=False)
op('onesLike', lambda xs, a: torch.ones_like(xs[0]), [case('float', rnd(2, 3)), case('bool', bools([1, 0])), case('empty', rnd(0, 2))], hvp=False)

# ---- running a case ----

def encode(t):
    out = []
    # clone: a gradient autograd materialized as an expanded zero has no storage of its own to list.
    for v in t.detach().clone(memory_format=torch.contiguous_format).reshape(-1).tolist():
        if isinstance(v, bool):
            out.append(int(v))
        elif isinstance(v, float) and not math.isfinite(v):
            out.append('NaN' if math.isnan(v) else ('Infinity' if v > 0 else '-Infinity'))
        else:
            out.append(v)
    return out


def encode_number(v):
    """A scalar argument as JSON can hold it (non-finite floats as strings, like tensor data)."""
    if isinstance(v, float) and not math.isfinite(v):
        return 'NaN' if math.isnan(v) else ('Infinity' if v > 0 else '-Infinity')
    return v


def kind(t):
    return 'float' if t.dtype.is_floating_point else ('bool' if t.dtype == torch.bool else 'int')


def materialize(spec, gen):
    what = spec[0]
    if what == 'const':
        return materialize(spec[1], gen)
    if what == 'rand':
        _, shape, lo, hi = spec
        t = lo + (hi - lo) * torch.rand(shape, generator=gen)
        return t.float().double()
    if what == 'values':
        return torch.tensor(spec[1], dtype=torch.float32).double().reshape(spec[2])
    if what == 'int':
        return torch.tensor(spec[1], dtype=torch.int64).reshape(spec[2])
    return torch.tensor(spec[1], dtype=torch.bool).reshape(spec[2])


def randn_like_f32(t, gen):
    return torch.randn(t.shape, generator=gen).float().double()


def evaluate(spec, c, xs, float_idx, gs=None, vs=None):
    """The op's outputs, and with upstream gs its gradients (and with vs the HVP), in the inputs' dtype."""
    xs = [x.detach().requires_grad_(True) if i in float_idx else x for i, x in enumerate(xs)]
    outs = spec['fn'](xs, c['args'])
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    if gs is None:
        return outs, None, None
    diff_outs = [o for o in outs if o.dtype.is_floating_point and o.requires_grad]
    params = [xs[i] for i in float_idx]
    loss = sum((o * g).sum() for o, g in zip(diff_outs, gs))
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
    if vs is None:
        return outs, grads, None
    dot = sum((g * v).sum() for g, v in zip(grads, vs))
    if dot.requires_grad:
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        hv = [h if h is not None else torch.zeros_like(p) for h, p in zip(hv, params)]
    else:  # the gradient does not depend on the inputs: a zero Hessian
        hv = [torch.zeros_like(p) for p in params]
    return outs, grads, hv


def differs(a32, a64):
    """Whether PyTorch's float32 result departs from its float64 one by more than float32 rounding."""
    a32 = a32.detach().double()
    a64 = a64.detach()
    same = torch.isclose(a32, a64, rtol=2 ** -20, atol=0, equal_nan=True)
    return not bool(same.all())


def run_case(name, spec, c, seed):
    gen = torch.Generator().manual_seed(seed)
    xs = [materialize(s, gen) for s in c['inputs']]
    entry = dict(name=c['name'], args={k: encode_number(v) for k, v in c['args'].items()},
                 inputs=[dict(kind=kind(x), shape=list(x.shape), data=encode(x)) for x in xs])
    for i, s in enumerate(c['inputs']):
        if s[0] == 'const':
            entry['inputs'][i]['grad'] = False
    float_idx = [i for i, x in enumerate(xs) if x.dtype.is_floating_point and c['inputs'][i][0] != 'const']
    try:
        outs, _, _ = evaluate(spec, c, xs, float_idx)
    except Exception as e:  # torch refuses: flatgrad must throw too
        entry['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        return entry
    entry['outputs'] = [dict(kind=kind(o), shape=list(o.shape), data=encode(o)) for o in outs]
    diff_outs = [o for o in outs if o.dtype.is_floating_point and o.requires_grad]
    gs = vs = grads = hv = None
    if c['grad'] and float_idx and diff_outs:
        gs = [randn_like_f32(o, gen) for o in diff_outs]
        entry['upstream'] = [encode(g) for g in gs]
        _, grads, _ = evaluate(spec, c, xs, float_idx, gs)
        entry['grads'] = [encode(g) for g in grads]
        if spec['hvp'] and c['hvp']:
            vs = [randn_like_f32(xs[i], gen) for i in float_idx]
            _, _, hv = evaluate(spec, c, xs, float_idx, gs, vs)
            entry['hvp'] = dict(v=[encode(v) for v in vs], out=[encode(h) for h in hv])
    # The same case in float32: where PyTorch's own float32 result departs from the float64 one
    # (a derivative that underflows, a cancellation), flatgrad's float32 may depart the same way.
    torch.set_default_dtype(torch.float32)
    try:
        f32 = lambda ts: None if ts is None else [t.float() for t in ts]
        xs32 = [x.float() if x.dtype.is_floating_point else x for x in xs]
        o32, g32, h32 = evaluate(spec, c, xs32, float_idx, f32(gs), f32(vs))
    finally:
        torch.set_default_dtype(torch.float64)
    alt = {}
    pick = lambda a32, a64: [encode(x) if x.dtype.is_floating_point and differs(x, y) else None for x, y in zip(a32, a64)]
    for key, a32, a64 in [('outputs', o32, outs), ('grads', g32, grads), ('hvp', h32, hv)]:
        if a32 is not None and any(v is not None for v in pick(a32, a64)):
            alt[key] = pick(a32, a64)
    if alt:
        entry['float32'] = alt
    return entry


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for old in os.listdir(OUT_DIR):
        if old.endswith('.json'):
            os.remove(os.path.join(OUT_DIR, old))
    total = 0
    for name, spec in OPS.items():
        cases = []
        for k, c in enumerate(spec['cases']):
            seed = (sum(map(ord, name)) * 1009 + k) % (2 ** 31)
            cases.append(run_case(name, spec, c, seed))
        with open(os.path.join(OUT_DIR, f'{name}.json'), 'w') as f:
            json.dump(dict(op=name, torch=torch.__version__, cases=cases), f, separators=(',', ':'), allow_nan=False)
            f.write('\n')
        total += len(cases)
    print(f'{len(OPS)} ops, {total} cases -> {os.path.relpath(OUT_DIR)}', file=sys.stderr)


if __name__ == '__main__':
    main()
