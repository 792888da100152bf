#!/usr/bin/env python3
"""Reference trajectories of torch.optim.AdamW and torch.optim.SGD (PyTorch's single-tensor float32 code) with
torch.nn.utils.clip_grad_norm_, for tests/test_train_optimizer.cpp.

Two parameters, a matrix "w" (5, 7) and a vector "b" (7); six steps of given gradients (some steps' global norm above
the clip threshold, some below), a learning rate that changes every step, weight decay on "w" only (two or more
dimensions). Writes optim.safetensors: the initial values, the gradients "grad.<step>.<name>", the learning rates
"lr" (6), and for each case "<case>.<name>" after the six steps, with AdamW's moments "<case>.m.<name>",
"<case>.v.<name>" and SGD's momentum buffers "<case>.buf.<name>".
usage: torch_optim_reference.py --out-dir DIR"""
import argparse
import os

import numpy as np
import torch

from safetensors_writer import save_safetensors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(13)
    w0, b0 = torch.randn(5, 7), torch.randn(7)
    steps = 6
    # Gradient scales chosen so the global norm crosses the clip threshold (1.5) both ways.
    scales = [0.05, 1.0, 0.2, 3.0, 0.1, 0.5]
    grads = [(torch.randn(5, 7) * s, torch.randn(7) * s) for s in scales]
    lrs = [1e-3 * (k + 1) for k in range(steps // 2)] + [3e-3 * 0.5 ** k for k in range(steps - steps // 2)]
    out = {"w": w0.numpy(), "b": b0.numpy(), "lr": np.array(lrs, dtype=np.float32)}
    for k, (gw, gb) in enumerate(grads):
        out[f"grad.{k}.w"], out[f"grad.{k}.b"] = gw.numpy(), gb.numpy()

    def run(case, make, clip):
        w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        opt = make([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}])
        for k, (gw, gb) in enumerate(grads):
            w.grad, b.grad = gw.clone(), gb.clone()
            if clip:
                torch.nn.utils.clip_grad_norm_([w, b], 1.5)
            for group in opt.param_groups:
                group["lr"] = lrs[k]
            opt.step()
        out[f"{case}.w"], out[f"{case}.b"] = w.detach().numpy(), b.detach().numpy()
        for name, p in (("w", w), ("b", b)):
            state = opt.state[p]
            if "exp_avg" in state:
                out[f"{case}.m.{name}"] = state["exp_avg"].numpy()
                out[f"{case}.v.{name}"] = state["exp_avg_sq"].numpy()
            if state.get("momentum_buffer") is not None:
                out[f"{case}.buf.{name}"] = state["momentum_buffer"].numpy()

    run("adamw", lambda groups: torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False), False)
    run("adamw_clip", lambda groups: torch.optim.AdamW(groups, lr=1e-3, foreach=False), True)
    run("sgd", lambda groups: torch.optim.SGD(groups, lr=1e-3, foreach=False), False)
    run("sgd_momentum_clip", lambda groups: torch.optim.SGD(groups, lr=1e-3, momentum=0.9, dampening=0.1,
                                                            foreach=False), True)
    run("sgd_nesterov", lambda groups: torch.optim.SGD(groups, lr=1e-3, momentum=0.8, nesterov=True, foreach=False),
        False)
    save_safetensors(os.path.join(args.out_dir, "optim.safetensors"), out)


if __name__ == "__main__":
    main()
