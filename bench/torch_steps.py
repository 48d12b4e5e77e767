"""PyTorch side of bench/torch.bench.ts: the small ResNet of `flatgrad train --model cnn`
(nn.models.resnetSmall, widths 8/16/32, one BasicBlock per stage, BatchNorm in train mode) built
with the same parameter names, loaded with the weights, batch and labels that the TypeScript side
wrote (DIR/problem.json + DIR/problem.bin, float32 / int32 little-endian), then timed: one SGD step
and one SAM step per iteration, each on its own copy of the model, wall time from the start of the
step to loss.item().

SAM is written as davda54/sam writes it: forward-backward at w, e_w = rho * g / (||g|| + 1e-12)
with one global norm, p += e_w (the old p kept), forward-backward at w + e_w, p = old p, base step.

  /usr/bin/python3 bench/torch_steps.py --data DIR --threads 1 --warmup 2 --steps 5

Prints one JSON line: torch version, threads, per-step times (ms) and losses.
"""
import argparse
import json
import os
import sys
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def resnet_small(widths, in_channels=1, classes=10):
    """nn.models.resnetSmall's layout and names: 0 = stem, 1..3 = blocks, 4 pool, 5 flatten, 6 linear."""
    layers = [nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())]
    c = widths[0]
    for s, w in enumerate(widths):
        layers.append(BasicBlock(c, w, 2 if s > 0 else 1))
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


class SAM(torch.optim.Optimizer):
    """davda54/sam's SAM (non-adaptive), as its users run it: first_step, second_step."""

    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        defaults = dict(rho=rho, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        grad_norm = torch.norm(torch.stack([p.grad.norm(p=2) for g in self.param_groups for p in g["params"] if p.grad is not None]), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale.to(p))

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(os.path.join(a.data, "problem.json")) as f:
        meta = json.load(f)
    with open(os.path.join(a.data, "problem.bin"), "rb") as f:
        blob = bytearray(f.read())

    def view(entry, dtype):
        n = 1
        for d in entry["shape"]:
            n *= d
        return torch.frombuffer(blob, dtype=dtype, count=n, offset=entry["offset"]).reshape(entry["shape"]).clone()

    state = {p["name"]: view(p, torch.float32) for p in meta["params"]}
    x = view(meta["x"], torch.float32)
    y = view(meta["y"], torch.int32).long()

    def make():
        m = resnet_small(meta["widths"], 1, meta["classes"])
        own = dict(m.named_parameters())
        if sorted(own) != sorted(state) or any(tuple(own[k].shape) != tuple(v.shape) for k, v in state.items()):
            sys.exit(f"torch_steps.py: the model's parameters {[(k, tuple(v.shape)) for k, v in own.items()]} differ from the file's {[(k, tuple(v.shape)) for k, v in state.items()]}")
        m.load_state_dict(state, strict=False)
        m.train()
        return m

    lr, momentum, rho = meta["lr"], meta["momentum"], meta["rho"]
    sgd_model, sam_model = make(), make()
    sgd_opt = torch.optim.SGD(sgd_model.parameters(), lr=lr, momentum=momentum)
    sam_opt = SAM(sam_model.parameters(), torch.optim.SGD, rho=rho, lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()

    def sgd_step():
        sgd_opt.zero_grad()
        loss = loss_fn(sgd_model(x), y)
        loss.backward()
        sgd_opt.step()
        return loss.item()

    def sam_step():
        loss = loss_fn(sam_model(x), y)
        loss.backward()
        sam_opt.first_step()
        sam_opt.zero_grad()
        loss_fn(sam_model(x), y).backward()
        sam_opt.second_step()
        sam_opt.zero_grad()
        return loss.item()

    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "sgdMs": [], "samMs": [], "sgdLoss": [], "samLoss": []}
    for i in range(a.warmup + a.steps):
        for kind, f in (("sgd", sgd_step), ("sam", sam_step)):
            t0 = time.perf_counter()
            loss = f()
            ms = (time.perf_counter() - t0) * 1000
            out[kind + "Loss"].append(loss)
            if i >= a.warmup:
                out[kind + "Ms"].append(ms)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
