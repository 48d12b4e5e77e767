#!/usr/bin/python3
"""Generates PyTorch reference trajectories of torch.optim.SGD / Adam / AdamW for
test/optim-torch.test.ts, with parameters that receive no gradient on some steps.

torch (1.13 here; 2.x the same) skips a parameter whose .grad is None: no weight decay, no
momentum, no Adam step, and its state['step'] is not advanced, so Adam's bias correction uses each
parameter's own count. Every step below starts with zero_grad(set_to_none=True), then gives a
gradient only to the parameters the schedule lists for that step. Run with Debian's python3-torch:

    /usr/bin/python3 scripts/gen-optim-fixtures.py test/fixtures/optim

The tests never import torch: they read the committed JSON (float64 reference values).
"""
import json
import math
import os
import sys

import torch

SHAPES = [[3, 4], [4], [5], [2, 3]]
STEPS = 6
# SCHEDULE[t]: the parameters that receive a gradient at step t (0-based). Parameter 0 always does;
# 1 misses steps 1-2; 2 misses the first two steps (its momentum and Adam state start late);
# 3 gets a gradient only at steps 0 and 4.
SCHEDULE = [[0, 1, 3], [0], [0, 2], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2]]

CASES = [
    dict(name="sgd_momentum_damp_wd", type="sgd", lr=0.1, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.01),
    dict(name="sgd_nesterov_wd", type="sgd", lr=0.05, momentum=0.8, dampening=0.0, nesterov=True, weight_decay=1e-3),
    dict(name="adam_l2", type="adam", lr=0.01, betas=[0.8, 0.9], eps=1e-8, weight_decay=0.1),
    dict(name="adamw", type="adamw", lr=0.01, betas=[0.9, 0.99], eps=1e-6, weight_decay=0.1),
]


def values(shape, seed, scale=1.0):
    """Deterministic values the test can rebuild without torch: scale * sin(0.37 i + seed)."""
    n = math.prod(shape)
    return [scale * math.sin(0.37 * i + seed) for i in range(n)]


def grad_values(k, t):
    return values(SHAPES[k], 1.3 * k + 0.7 * t + 0.1)


def make_opt(case, params):
    if case["type"] == "sgd":
        return torch.optim.SGD(params, lr=case["lr"], momentum=case["momentum"], dampening=case["dampening"],
                               nesterov=case["nesterov"], weight_decay=case["weight_decay"])
    cls = torch.optim.Adam if case["type"] == "adam" else torch.optim.AdamW
    return cls(params, lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"], weight_decay=case["weight_decay"])


def run(case):
    params = [torch.tensor(values(s, 0.5 + k), dtype=torch.float64).reshape(s).requires_grad_(True) for k, s in enumerate(SHAPES)]
    opt = make_opt(case, params)
    after = []
    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        for k in SCHEDULE[t]:
            params[k].grad = torch.tensor(grad_values(k, t), dtype=torch.float64).reshape(SHAPES[k])
        opt.step()
        after.append([p.detach().reshape(-1).tolist() for p in params])
    steps = []
    for p in params:
        st = opt.state.get(p, {})
        if "step" in st:
            steps.append(int(st["step"]))
        else:
            # SGD keeps no step; count the updates the parameter took (those with a gradient).
            k = [q is p for q in params].index(True)
            steps.append(sum(1 for s in SCHEDULE if k in s))
    return dict(case=case, shapes=SHAPES, schedule=SCHEDULE, steps=STEPS, torch_version=torch.__version__,
                init_formula="p_k[i] = sin(0.37 i + 0.5 + k)", grad_formula="g_k,t[i] = sin(0.37 i + 1.3 k + 0.7 t + 0.1)",
                params_after=after, param_steps=steps)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/optim"
    os.makedirs(out, exist_ok=True)
    for case in CASES:
        with open(os.path.join(out, case["name"] + ".json"), "w") as f:
            json.dump(run(case), f, indent=1)
            f.write("\n")
        print("wrote", case["name"])


if __name__ == "__main__":
    main()
