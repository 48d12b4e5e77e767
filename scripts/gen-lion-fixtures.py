#!/usr/bin/python3
"""Generates PyTorch reference trajectories of Lion (Chen et al. 2023, "Symbolic Discovery of
Optimization Algorithms", Algorithm 2) for examples/lion.mjs, checked by test/arena-kernels.test.ts.

Lion is not in torch.optim; the update below is written from the paper (decoupled weight decay as
in its Algorithm 2 and the authors' reference code), one tensor at a time:

    c = beta1 * m + (1 - beta1) * g
    p = p * (1 - lr * wd) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g

Float32 parameters, two parameter groups, awkward sizes (1, 3, 63, 65), and one parameter without
a gradient on some steps (skipped, as torch optimizers skip grad None). Run with Debian's
python3-torch:

    /usr/bin/python3 scripts/gen-lion-fixtures.py test/fixtures/optim

The tests never import torch: they read the committed JSON.
"""
import json
import os
import sys

import torch

SHAPES = [[7, 9], [3], [5, 13], [1]]
GROUP_OF = [0, 0, 1, 1]
GROUPS = [
    dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1),
    dict(lr=3e-3, beta1=0.95, beta2=0.98, weight_decay=0.0),
]
STEPS = 6
# SCHEDULE[t]: the parameters that receive a gradient at step t; parameter 2 misses steps 1 and 3.
SCHEDULE = [[0, 1, 2, 3], [0, 1, 3], [0, 1, 2, 3], [0, 1, 3], [0, 1, 2, 3], [0, 1, 2, 3]]


@torch.no_grad()
def lion_step(params, groups):
    for group in groups:
        lr, beta1, beta2, wd = group["lr"], group["beta1"], group["beta2"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = group["state"].setdefault(p, {"exp_avg": torch.zeros_like(p)})
            m = state["exp_avg"]
            p.mul_(1 - lr * wd)
            c = m.clone().mul_(beta1).add_(p.grad, alpha=1 - beta1)
            p.add_(torch.sign(c), alpha=-lr)
            m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


def flat(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def main(out_dir):
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=torch.float32) for s in SHAPES]
    init = [flat(p) for p in params]
    groups = [dict(g, params=[p for p, gi in zip(params, GROUP_OF) if gi == i], state={}) for i, g in enumerate(GROUPS)]
    steps = []
    for t in range(STEPS):
        grads = []
        for k, p in enumerate(params):
            if k in SCHEDULE[t]:
                p.grad = torch.randn(p.shape, dtype=torch.float32)
                grads.append(flat(p.grad))
            else:
                p.grad = None
                grads.append(None)
        lion_step(params, groups)
        exp_avg = []
        for k, p in enumerate(params):
            st = groups[GROUP_OF[k]]["state"].get(p)
            exp_avg.append(flat(st["exp_avg"]) if st else [0.0] * p.numel())
        steps.append(dict(grads=grads, params=[flat(p) for p in params], exp_avg=exp_avg))
    fixture = dict(
        generator="scripts/gen-lion-fixtures.py",
        torch=torch.__version__,
        dtype="float32",
        shapes=SHAPES,
        group_of=GROUP_OF,
        groups=GROUPS,
        init=init,
        steps=steps,
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "lion.json"), "w") as f:
        json.dump(fixture, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/optim")
