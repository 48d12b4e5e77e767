#!/usr/bin/python3
"""Reference trajectories for the rest of the sharpness-aware family, for test/sam-variants-fixtures.test.ts.

Each member is written here from its paper, independently of src/optim/variants.ts:

- m-SAM (Foret et al. 2021, sec. 4 "m-sharpness"): the batch is split into m micro-batches; each
  is perturbed by its own gradient, e_i = rho g_i / (||g_i|| + eps), the gradient of micro-batch i
  is taken at w + e_i, and the base optimizer steps once with the mean of the m gradients.
- LookSAM (Liu et al. 2022, Algorithm 1): every k-th step (t mod k == 0, t from 0) the SAM gradient
  g_s and g_v = g_s - (g . g_s / ||g||^2) g (the part of g_s orthogonal to g); the steps between
  reuse it: d = g + alpha (||g|| / ||g_v||) g_v.
- ESAM (Du et al. 2022): stochastic weight perturbation (each parameter tensor is perturbed with
  probability beta, the perturbation scaled by 1/beta; as in the official implementation the
  gradient norm is taken over the selected tensors) and sharpness-sensitive data selection (the
  second gradient is the mean loss of the gamma |B| samples whose loss rises most at w + e).
  The returned loss is the clean batch loss.
- Random-perturbation SAM (the "random direction" baseline of Foret et al. 2021): e = rho z /
  (||z|| + eps), z ~ N(0, I) over all parameters; one gradient, at w + e (its loss is returned).
- RWP, mixed (Li et al. 2024, "Revisiting random weight perturbation", m-RWP with the official
  code's filter-wise noise): eps_ij ~ N(0, (gamma ||W_i||)^2) for each output row i of a weight
  matrix, N(0, (gamma (||b|| + 1e-16))^2) for a vector; d = (1 - alpha) g(w) + alpha g(w + eps).
- GSAM (Zhuang et al. 2022, Algorithm 1): g_s = grad at w + rho_t g/(||g|| + eps); the clean
  gradient's component orthogonal to g_s, g_perp = g - (g . g_s / ||g_s||^2) g_s; d = g_s -
  alpha g_perp; rho_t = rho_min + (rho - rho_min)(lr_t - lr_min)/(lr_max - lr_min).

The random members need the same noise as flatgrad draws: this script re-implements flatgrad's
counter-based generator (src/kernels/rng.ts: PCG-RXS-M-XS hashes, Box-Muller normals, the key of
draw d of seed s) and its arena indexing (parameter k's element j is draw element offset_k + j,
offsets rounded up to 64 elements). The test seeds flatgrad with `rng_seed` right before step 1
and checks that the noise the library drew equals the `noise` recorded here.

Same case format as scripts/gen-sam-fixtures.py (test/fixtures/sam/README.md); output is one file
per case under test/fixtures/sam/variants/ (see its README). Run with Debian's python3-torch:

    /usr/bin/python3 scripts/gen-variant-fixtures.py test/fixtures/sam/variants
"""
import importlib.util
import json
import math
import os
import struct
import sys

import torch

_spec = importlib.util.spec_from_file_location("gen_sam_fixtures", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-sam-fixtures.py"))
gsf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gsf)

SGDM = dict(type="sgd", lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=1e-3)
# AdamW with its default eps: the test passes no `eps` to the wrapper, whatever it is called.
ADAMW = dict(type="adamw", lr=0.01, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01)

CASES = [
    dict(name="msam_m2_mlp4-6-3_tanh_sgdm", sizes=[4, 6, 3], act="tanh", batch=8, nbatches=2, steps=4, seed=21,
         loss=dict(label_smoothing=0.0), optimizer=dict(SGDM, nesterov=True),
         sharpness=dict(type="msam", rho=0.1, m=2, norm_eps=1e-12)),
    dict(name="msam_m4_mlp5-7-3_relu_adamw", sizes=[5, 7, 3], act="relu", batch=8, nbatches=1, steps=3, seed=22,
         loss=dict(label_smoothing=0.0), optimizer=ADAMW,
         sharpness=dict(type="msam", rho=0.2, m=4, norm_eps=1e-12)),
    dict(name="looksam_k3_mlp4-6-3_tanh_sgdm", sizes=[4, 6, 3], act="tanh", batch=6, nbatches=2, steps=5, seed=23,
         loss=dict(label_smoothing=0.0), optimizer=SGDM,
         sharpness=dict(type="looksam", rho=0.15, k=3, alpha=0.6, norm_eps=1e-12)),
    dict(name="looksam_k2_mlp5-6-2_tanh_adamw", sizes=[5, 6, 2], act="tanh", batch=6, nbatches=1, steps=4, seed=24,
         loss=dict(label_smoothing=0.0), optimizer=ADAMW,
         sharpness=dict(type="looksam", rho=0.1, k=2, alpha=1.2, norm_eps=1e-12)),
    dict(name="esam_b0.5_g0.5_mlp4-5-5-3_tanh_sgdm", sizes=[4, 5, 5, 3], act="tanh", batch=8, nbatches=2, steps=4, seed=25, rng_seed=7,
         loss=dict(label_smoothing=0.0), optimizer=SGDM,
         sharpness=dict(type="esam", rho=0.3, beta=0.5, gamma=0.5, norm_eps=1e-12)),
    dict(name="esam_b1_g0.25_mlp4-6-3_tanh_adamw", sizes=[4, 6, 3], act="tanh", batch=8, nbatches=1, steps=3, seed=26,
         loss=dict(label_smoothing=0.0), optimizer=ADAMW,
         sharpness=dict(type="esam", rho=0.2, beta=1.0, gamma=0.25, norm_eps=1e-12)),
    dict(name="randomsam_mlp4-6-3_tanh_adamw", sizes=[4, 6, 3], act="tanh", batch=6, nbatches=2, steps=3, seed=27, rng_seed=11,
         loss=dict(label_smoothing=0.0), optimizer=ADAMW,
         sharpness=dict(type="randomsam", rho=0.2, norm_eps=1e-12)),
    dict(name="rwp_a0.3_mlp4-6-3_tanh_sgdm", sizes=[4, 6, 3], act="tanh", batch=6, nbatches=2, steps=4, seed=28, rng_seed=13,
         loss=dict(label_smoothing=0.0), optimizer=SGDM,
         sharpness=dict(type="rwp", gamma=0.05, alpha=0.3)),
    dict(name="gsam_a0.3_mlp4-6-3_tanh_sgdm", sizes=[4, 6, 3], act="tanh", batch=6, nbatches=2, steps=4, seed=29,
         loss=dict(label_smoothing=0.0), optimizer=SGDM,
         sharpness=dict(type="gsam", rho=0.1, alpha=0.3, rho_min=None, norm_eps=1e-12)),
    # rho follows a linearly decaying learning rate: rho_t from rho (at lr_max = the first lr) to rho_min.
    dict(name="gsam_a0.5_rhosched_mlp5-6-3_tanh_adamw", sizes=[5, 6, 3], act="tanh", batch=6, nbatches=1, steps=4, seed=30,
         loss=dict(label_smoothing=0.0), optimizer=ADAMW, lr_schedule=[0.01, 0.0075, 0.005, 0.0025],
         sharpness=dict(type="gsam", rho=0.2, alpha=0.5, rho_min=0.05, lr_min=0.0, norm_eps=1e-12)),
]

# ------------------------------------------------------------------ flatgrad's generator, in Python

M32 = 0xFFFFFFFF
BLOCK = 64  # the arena's alignment, in elements (src/kernels/fused.ts)


def pcg_hash(v):
    s = (v * 747796405 + 2891336453) & M32
    w = ((((s >> ((s >> 28) + 4)) ^ s) & M32) * 277803737) & M32
    return ((w >> 22) ^ w) & M32


def hash_bits(k0, k1, i):
    return pcg_hash(pcg_hash((i + k0) & M32) ^ k1)


def uniform_at(k0, k1, i):
    return (hash_bits(k0, k1, i) >> 8) * 5.9604644775390625e-8


def normal_at(k0, k1, i):
    u1 = ((hash_bits(k0, k1, 2 * i) >> 8) + 1) * 5.9604644775390625e-8
    u2 = (hash_bits(k0, k1, 2 * i + 1) >> 8) * 5.9604644775390625e-8
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def fround(x):
    return struct.unpack("f", struct.pack("f", x))[0]


class Keys:
    """flatgrad's global generator after manualSeed(seed): the key pair of each successive draw."""

    def __init__(self, seed):
        self.seed = seed
        self.draws = 0

    def next(self):
        lo = self.seed & M32
        hi = (self.seed // 2**32) & M32
        d = self.draws
        self.draws += 1
        k0 = pcg_hash((lo ^ pcg_hash(d)) & M32)
        k1 = pcg_hash((hi ^ pcg_hash((k0 + d + 0x9E3779B9) & M32)) & M32)
        return k0, k1


def arena_offsets(ps):
    out, off = [], 0
    for p in ps:
        out.append(off)
        off += -(-p.numel() // BLOCK) * BLOCK
    return out


def standard_normals(ps, key, dtype):
    k0, k1 = key
    return [torch.tensor([normal_at(k0, k1, o + j) for j in range(p.numel())], dtype=dtype).reshape(p.shape) for p, o in zip(ps, arena_offsets(ps))]


# ------------------------------------------------------------------------------------- the steps


def flat(ts):
    return [float(v) for t in ts for v in t.detach().flatten().tolist()]


def norm(ts):
    return torch.sqrt(sum((t * t).sum() for t in ts))


def run(case, dtype):
    model = gsf.Mlp(case, dtype)
    ps = list(model.parameters())
    o = case["optimizer"]
    base = gsf.base_optimizer(ps, o)
    s = case["sharpness"]
    kind = s["type"]
    batches = [(torch.tensor(b["inputs"], dtype=dtype), torch.tensor(b["labels"])) for b in case["data"]["batches"]]
    keys = Keys(case.get("rng_seed", 0))
    lrs = case.get("lr_schedule")

    def losses(x, y):
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none", label_smoothing=case["loss"]["label_smoothing"])

    def grad_at(x, y, shift=None):
        """Loss and gradient of the mean loss of (x, y) at w + shift; w is left unchanged."""
        old = [p.detach().clone() for p in ps]
        with torch.no_grad():
            if shift is not None:
                for p, e in zip(ps, shift):
                    p.add_(e)
        for p in ps:
            p.grad = None
        l = losses(x, y).mean()
        l.backward()
        g = [p.grad.detach().clone() for p in ps]
        with torch.no_grad():
            for p, w in zip(ps, old):
                p.copy_(w)  # restore exactly, as flatgrad's default restore: 'copy'
        return float(l), g

    def sam_shift(g, rho, eps, scale=1.0):
        n = norm(g)
        return [gi * (rho * scale / (n + eps)) for gi in g]

    gv = None  # LookSAM's stored orthogonal direction
    steps = []
    for t in range(1, case["steps"] + 1):
        bi = (t - 1) % len(batches)
        x, y = batches[bi]
        rec = dict(step=t, batch_index=bi)
        if lrs is not None:
            for gr in base.param_groups:
                gr["lr"] = lrs[t - 1]
        if kind == "msam":
            m = s["m"]
            per = x.shape[0] // m
            acc = [torch.zeros_like(p) for p in ps]
            ls = []
            for i in range(m):
                xi, yi = x[i * per:(i + 1) * per], y[i * per:(i + 1) * per]
                li, gi = grad_at(xi, yi)
                ls.append(li)
                _, gp = grad_at(xi, yi, sam_shift(gi, s["rho"], s["norm_eps"]))
                acc = [a + q / m for a, q in zip(acc, gp)]
            rec["loss"] = sum(ls) / m
            d = acc
        elif kind == "looksam":
            rec["loss"], g = grad_at(x, y)
            if (t - 1) % s["k"] == 0:
                _, gs = grad_at(x, y, sam_shift(g, s["rho"], s["norm_eps"]))
                proj = sum((a * b).sum() for a, b in zip(g, gs)) / sum((a * a).sum() for a in g)
                gv = [b - proj * a for a, b in zip(g, gs)]
                d = gs
                rec["sam_step"] = True
            else:
                c = s["alpha"] * norm(g) / norm(gv)
                d = [a + c * v for a, v in zip(g, gv)]
                rec["sam_step"] = False
        elif kind == "esam":
            beta, gamma = s["beta"], s["gamma"]
            B = x.shape[0]
            for p in ps:
                p.grad = None
            l_before = losses(x, y)
            l_before.mean().backward()
            g = [p.grad.detach().clone() for p in ps]
            rec["loss"] = float(l_before.mean())
            if beta < 1:
                k0, k1 = keys.next()
                sel = [uniform_at(k0, k1, k) < fround(beta) for k in range(len(ps))]
            else:
                sel = [True] * len(ps)
            rec["selected_params"] = sel
            n = norm([gi for gi, on in zip(g, sel) if on]) if any(sel) else torch.zeros((), dtype=dtype)
            e = [gi * (s["rho"] / beta / (n + s["norm_eps"])) if on else torch.zeros_like(gi) for gi, on in zip(g, sel)]
            with torch.no_grad():
                old = [p.detach().clone() for p in ps]
                for p, ei in zip(ps, e):
                    p.add_(ei)
                sharp = losses(x, y) - l_before.detach()
                for p, w in zip(ps, old):
                    p.copy_(w)
            kk = max(1, round(gamma * B))
            assert kk == gamma * B, "choose gamma |B| integral: the rounding of a half is not what this checks"
            order = torch.argsort(sharp, descending=True)
            idx = order[:kk]
            if kk < B:
                # The selection must not hang on rounding: the kth and (k+1)th increases are well apart.
                srt = sharp[order]
                gap = float(srt[kk - 1] - srt[kk])
                assert gap > 1e-3 * float(srt.abs().max()), f"{case['name']} step {t}: samples {kk - 1}/{kk} too close ({gap})"
            idx = torch.sort(idx).values
            rec["selected_samples"] = [int(i) for i in idx]
            _, d = grad_at(x[idx], y[idx], e)
        elif kind == "randomsam":
            z = standard_normals(ps, keys.next(), dtype)
            rec["noise"] = flat(z)
            rec["loss"], d = grad_at(x, y, sam_shift(z, s["rho"], s["norm_eps"]))
        elif kind == "rwp":
            rec["loss"], g = grad_at(x, y)
            z = standard_normals(ps, keys.next(), dtype)
            noise = []
            with torch.no_grad():
                for p, zi in zip(ps, z):
                    if p.dim() >= 2:
                        std = p.reshape(p.shape[0], -1).norm(dim=1, keepdim=True).reshape([p.shape[0]] + [1] * (p.dim() - 1))
                        noise.append(zi * (s["gamma"] * std))
                    else:
                        noise.append(zi * (s["gamma"] * (p.norm() + 1e-16)))
            rec["noise"] = flat(noise)
            _, gn = grad_at(x, y, noise)
            d = [(1 - s["alpha"]) * a + s["alpha"] * b for a, b in zip(g, gn)]
        elif kind == "gsam":
            rho = s["rho"]
            if s.get("rho_min") is not None:
                lr_max, lr_min = lrs[0] if lrs else o["lr"], s["lr_min"]
                rho = s["rho_min"] + (s["rho"] - s["rho_min"]) * (base.param_groups[0]["lr"] - lr_min) / (lr_max - lr_min)
            rec["rho_t"] = rho
            rec["loss"], g = grad_at(x, y)
            _, gs = grad_at(x, y, sam_shift(g, rho, s["norm_eps"]))
            proj = sum((a * b).sum() for a, b in zip(g, gs)) / sum((b * b).sum() for b in gs)
            gperp = [a - proj * b for a, b in zip(g, gs)]
            d = [b - s["alpha"] * q for b, q in zip(gs, gperp)]
        else:
            raise ValueError(kind)
        for p, di in zip(ps, d):
            p.grad = di.clone()
        base.step()
        rec["params"] = [dict(weight=l.weight.detach().tolist(), bias=l.bias.detach().tolist()) for l in model.layers]
        steps.append(rec)
    return dict(steps=steps, final_params_flat=flat(ps)), [n for n, _ in model.named_parameters()], [list(p.shape) for p in ps]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/sam/variants"
    os.makedirs(out, exist_ok=True)
    for spec in CASES:
        case = gsf.make_case(spec)
        case["format"] = "sam-variant-case/1"
        case["description"] = case["description"].replace("gen-sam-fixtures.py", "gen-variant-fixtures.py")
        if "rng_seed" in spec:
            case["rng_seed"] = spec["rng_seed"]
        if "lr_schedule" in spec:
            case["lr_schedule"] = spec["lr_schedule"]
        r64, names, shapes = run(case, torch.float64)
        r32, _, _ = run(case, torch.float32)
        # The float32 run takes the same discrete decisions (ESAM's selections) as the float64 one.
        for a, b in zip(r64["steps"], r32["steps"]):
            assert a.get("selected_samples") == b.get("selected_samples"), case["name"]
        ref = {"oracle": "gen-variant-fixtures.py", "torch_version": torch.__version__, "param_names": names, "param_shapes": shapes, "float64": r64, "float32": r32}
        with open(os.path.join(out, case["name"] + ".json"), "w") as f:
            json.dump(dict(case=case, reference=ref), f, indent=1)
        print("wrote", case["name"])


if __name__ == "__main__":
    main()
