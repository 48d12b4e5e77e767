#!/usr/bin/python3
"""PyTorch reference trajectories of Friendly-SAM (Li, Zhou, Huang, Yang, "Friendly
Sharpness-Aware Minimization", CVPR 2024) for examples/friendly-sam.mjs, checked by
test/friendly-sam.test.ts.

F-SAM is not in torch; it is written here from the paper's Algorithm 1, one tensor at a time,
independently of flatgrad. At step t with minibatch gradient g_t:

    m_t = lambda m_{t-1} + (1 - lambda) g_t          (EMA of the gradients, m_0 = 0)
    d_t = g_t - sigma m_t                            (the batch-specific part of the gradient)
    e_t = rho d_t / (||d_t|| + 1e-12)                (one norm over all parameters with a gradient)
    w_{t+1} = base optimizer step from w_t with the gradient at w_t + e_t

(The authors' code starts m at the first gradient instead of zero; the paper's zero start is used.)
The base optimizer is torch.optim.SGD with momentum and weight decay. Like flatgrad's SAM, a step
whose first gradient holds a NaN or Inf is skipped whole (no state changes).

The loss is elementwise so that both libraries compute the same gradients:
    L_t(w) = sum_k sum(A_tk * w_k * w_k) + sum(B_tk * tanh(w_k))
over the parameters active at step t (parameter 3 is left out of steps 1 and 3: grad None, skipped
as torch optimizers skip it). Step 2 puts a NaN in B (a NaN gradient: the step must be skipped).
Two parameter groups with their own rho, sigma, lambda and lr. Trajectories in float64 and float32.

    /usr/bin/python3 scripts/gen-friendly-sam-fixtures.py test/fixtures/optim

The tests never import torch: they read the committed JSON.
"""
import json
import math
import os
import sys

import torch

SHAPES = [[6, 5], [5], [3, 4], [1]]
GROUP_OF = [0, 0, 1, 1]
GROUPS = [
    dict(rho=0.05, sigma=1.0, lmbda=0.9, lr=0.1, momentum=0.9, weight_decay=1e-3),
    dict(rho=0.1, sigma=0.5, lmbda=0.6, lr=0.05, momentum=0.9, weight_decay=0.0),
]
STEPS = 6
ACTIVE = [[0, 1, 2, 3], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3]]
NAN_STEP = 2
SAM_KEYS = ("rho", "sigma", "lmbda")


def loss_of(params, data, active, dtype):
    total = torch.zeros((), dtype=dtype)
    for k in active:
        a = torch.tensor(data["A"][k], dtype=dtype).reshape(SHAPES[k])
        b = torch.tensor(data["B"][k], dtype=dtype).reshape(-1)
        if data.get("nan") and data["nan"][0] == k:
            b[data["nan"][1]] = math.nan
        b = b.reshape(SHAPES[k])
        total = total + (a * params[k] * params[k]).sum() + (b * torch.tanh(params[k])).sum()
    return total


def grads_at(params, data, active, dtype):
    for p in params:
        p.grad = None
    loss_of(params, data, active, dtype).backward()


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def run(init, data, dtype):
    params = [torch.tensor(v, dtype=dtype).reshape(s).requires_grad_() for v, s in zip(init, SHAPES)]
    base = torch.optim.SGD(
        [dict(params=[p for p, gi in zip(params, GROUP_OF) if gi == i], **{k: v for k, v in g.items() if k not in SAM_KEYS}) for i, g in enumerate(GROUPS)],
        lr=0.1,
    )
    m = [torch.zeros_like(p) for p in params]
    out = []
    for t in range(STEPS):
        grads_at(params, data[t], ACTIVE[t], dtype)
        with torch.no_grad():
            live = [k for k in range(len(params)) if params[k].grad is not None]
            if all(torch.isfinite(params[k].grad).all() for k in live):
                d = {}
                for k in live:
                    g = GROUPS[GROUP_OF[k]]
                    m[k] = g["lmbda"] * m[k] + (1 - g["lmbda"]) * params[k].grad
                    d[k] = params[k].grad - g["sigma"] * m[k]
                norm = torch.norm(torch.stack([torch.norm(d[k]) for k in live]))
                backup = [p.detach().clone() for p in params]
                for k in live:
                    params[k].add_(d[k] * (GROUPS[GROUP_OF[k]]["rho"] / (norm + 1e-12)))
                skip = False
            else:
                skip = True
        if skip:
            out.append(dict(params=[flat(p) for p in params], m=[flat(x) for x in m], skipped=True))
            continue
        grads_at(params, data[t], ACTIVE[t], dtype)
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
        base.step()
        out.append(dict(params=[flat(p) for p in params], m=[flat(x) for x in m], skipped=False))
    return out


def main(out_dir):
    torch.manual_seed(0)
    init = [flat(torch.randn(s, dtype=torch.float64) * 0.5) for s in SHAPES]
    data = []
    for t in range(STEPS):
        A = [flat(torch.rand(s, dtype=torch.float64) + 0.1) for s in SHAPES]
        B = [flat(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
        # JSON has no NaN: the step records [parameter, element] of B that is NaN at that step.
        data.append(dict(A=A, B=B, active=ACTIVE[t], nan=[0, 3] if t == NAN_STEP else None))
    # float32 runs from the float32-rounded initial values and data, as the test uploads them.
    fixture = dict(
        shapes=SHAPES,
        group_of=GROUP_OF,
        groups=GROUPS,
        nan_step=NAN_STEP,
        init=init,
        data=data,
        float64=run(init, data, torch.float64),
        float32=run(init, data, torch.float32),
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "friendly-sam.json"), "w") as f:
        json.dump(fixture, f, allow_nan=False)
    print(f"wrote {os.path.join(out_dir, 'friendly-sam.json')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/optim")
