"""I-CFM and OT-CFM training steps side by side with TorchCFM, in one run (issue 13).

Run (exclusive CPU; TorchCFM in a scratch venv, never a dependency of this library)::

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch pot scipy
    /tmp/torchvenv/bin/pip install --no-deps torchcfm
    python benchmarks/cfm_vs_torchcfm.py --torch-python /tmp/torchvenv/bin/python \\
        --out benchmarks/results/cfm_vs_torchcfm.json

Both sides train the same network (MLP 3×256, SiLU, 16 Fourier time features: the library's
``MLPDenoiser``), batch 256 of fresh 8gaussians samples per step, Adam (lr 1e-3) and an EMA of
the weights. This library runs through its real training path (``train.toy.train_flow``: the
loop, logging, the coupling); the per-step time is the median over logging windows of
``train/examples_per_sec`` after the first two windows (compilation, and batches the input
pipeline paired meanwhile). TorchCFM runs its
``ConditionalFlowMatcher`` (I-CFM) and ``ExactOptimalTransportConditionalFlowMatcher`` (POT's
network simplex on the host, inside the step) in a plain PyTorch loop; median over windows.
Rows: I-CFM fused (``steps_per_call`` steps per call) and unfused; OT-CFM with the host solver
in the input pipeline (:mod:`simple_reflow.couplings.host`) fused and unfused, and with the
in-step auction; LOOM-CFM (no TorchCFM counterpart) with the host solver and the auction.
A large-matmul peak is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import matmul_peak, run_metadata, write_json  # noqa: E402

BATCH = 256

TORCH_SIDE = r"""
import json, math, sys, time
import numpy as np
import torch
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher)

kind, batch, windows, per_window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)

class MLP(torch.nn.Module):  # the library's MLPDenoiser velocity net
    def __init__(self, dim=2, hidden=256, depth=3, nf=16):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(64.0), nf)) * math.pi
        self.register_buffer("freqs", freqs)
        sizes = [dim + 2 * nf] + [hidden] * depth
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = torch.nn.Linear(hidden, dim)

    def forward(self, x, t):
        ang = t[:, None] * self.freqs[None]
        h = torch.cat([x, torch.sin(ang), torch.cos(ang)], -1)
        for layer in self.layers:
            h = torch.nn.functional.silu(layer(h))
        return self.out(h)

angles = torch.arange(8) * (math.pi / 4)  # 8 Gaussians on a circle of radius 4, std 0.5
centers = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)

def sample_data(n):
    return centers[torch.randint(0, 8, (n,))] + 0.5 * torch.randn(n, 2)

model = MLP()
ema = [p.detach().clone() for p in model.parameters()]
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
fm = ConditionalFlowMatcher(sigma=0.0) if kind == "icfm" else \
    ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)

def step():
    x1 = sample_data(batch)
    x0 = torch.randn(batch, 2)
    t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
    loss = torch.mean((model(xt, t) - ut) ** 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        torch._foreach_mul_(ema, 0.999)
        torch._foreach_add_(ema, list(model.parameters()), alpha=0.001)
    return loss

for _ in range(50):
    step()
times = []
for _ in range(windows):
    start = time.perf_counter()
    for _ in range(per_window):
        loss = step()
    float(loss)
    times.append((time.perf_counter() - start) / per_window)
print(json.dumps({"per_step_ms": 1e3 * float(np.median(times)),
                  "windows_ms": [1e3 * t for t in times], "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
"""


def ours(name, solver, steps_per_call, window, windows):
    """Median ms per step of the library's toy 1-RF training with a coupling (LOOM-CFM: over a
    fixed set of ``LOOM_NUM_EXAMPLES`` samples, as ``configs/toy2d.py:loom-cfm``)."""
    from configs.toy2d import LOOM_NUM_EXAMPLES, get_config
    from simple_reflow.couplings import make_coupling
    from simple_reflow.train.toy import ONE_RF_LOSS, make_data_batch_fn, train_flow

    cfg = get_config()
    cfg.training.update(
        batch_size=BATCH, steps_per_call=steps_per_call, log_every=window, ckpt_every=10**9
    )
    num_data = LOOM_NUM_EXAMPLES if name == "loom" else None
    coupling = make_coupling(name, data_shape=(2,), num_data=num_data, solver=solver)
    batch_fn, data = make_data_batch_fn("8gaussians", BATCH, 0, num_data)
    with tempfile.TemporaryDirectory() as work:
        train_flow(
            cfg,
            work,
            batch_fn=batch_fn,
            data=data,
            loss_fn=ONE_RF_LOSS,
            coupling=coupling,
            num_steps=window * (windows + 2),
            seed=0,
            desc=f"{name}/{solver}/{steps_per_call}",
        )
        with open(os.path.join(work, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    # the first windows hold the compilation and the batches the pipeline paired meanwhile
    per_step = [1e3 * BATCH / r["train/examples_per_sec"] for r in rows[2:]]
    return {"per_step_ms": float(np.median(per_step)), "windows_ms": per_step}


def theirs(python, kind, windows, window):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(TORCH_SIDE)
    try:
        res = subprocess.run(
            [python, f.name, kind, str(BATCH), str(windows), str(window)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f.name)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", required=True, help="a Python with torch + torchcfm")
    parser.add_argument("--out", required=True)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window", type=int, default=400, help="steps per timing window")
    parser.add_argument("--fused", type=int, default=100, help="steps_per_call when fused")
    args = parser.parse_args()
    w, n = args.window, args.windows
    rows = {
        "torchcfm_icfm": lambda: theirs(args.torch_python, "icfm", n, w),
        "torchcfm_otcfm": lambda: theirs(args.torch_python, "otcfm", n, w),
        "icfm_fused": lambda: ours("independent", "auto", args.fused, w, n),
        "icfm_unfused": lambda: ours("independent", "auto", 1, w, n),
        "otcfm_host_fused": lambda: ours("ot", "host", args.fused, w, n),
        "otcfm_host_unfused": lambda: ours("ot", "host", 1, w, n),
        "otcfm_device_auction": lambda: ours("ot", "device", 1, w // 4, n),
        "loomcfm_host_fused": lambda: ours("loom", "host", args.fused, w, n),
        "loomcfm_device_auction": lambda: ours("loom", "device", 1, w // 4, n),
    }
    out = {"meta": run_metadata(vars(args)), "matmul_peak_flops": matmul_peak()}
    for name, fn in rows.items():
        out[name] = fn()
        print(f"{name}: {out[name]['per_step_ms']:.3f} ms/step", flush=True)
    t_i, t_ot = out["torchcfm_icfm"]["per_step_ms"], out["torchcfm_otcfm"]["per_step_ms"]
    out["speedup_vs_torchcfm"] = {
        "icfm_fused": t_i / out["icfm_fused"]["per_step_ms"],
        "icfm_unfused": t_i / out["icfm_unfused"]["per_step_ms"],
        "otcfm_host_fused": t_ot / out["otcfm_host_fused"]["per_step_ms"],
        "otcfm_host_unfused": t_ot / out["otcfm_host_unfused"]["per_step_ms"],
        "otcfm_device_auction": t_ot / out["otcfm_device_auction"]["per_step_ms"],
    }
    print(json.dumps(out["speedup_vs_torchcfm"], indent=1), flush=True)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
