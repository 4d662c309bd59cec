"""CPU speed of upsr's selective scan and Mamba block against a per-step reference.

The reference is mamba_ssm's ``selective_scan_ref`` written out from its math (Gu & Dao 2023,
Algorithm 2; official-implementations.md §6.3): softplus(Δ + bias), Ā = exp(Δ·A) and
B̄u = Δ·B·u precomputed for the whole sequence as ``[B, Di, L, N]`` tensors, then one Python
iteration per time step, then D skip and SiLU(z) gate. (The official code indexes
``deltaA[:, :, i]``; here the per-step slices come from ``unbind``, whose backward stacks the
step gradients: indexing would scatter each step into a full-size zero tensor and make the
reference's backward quadratic in L, so this comparison flatters the reference.)

Default size: B=1, Di=64, N=16, L=24000 = one Wave-U-Mamba layer (d_model 32) on 1 s of 48 kHz
audio after its first 2× pooling. Prints a table of medians; run on an idle machine for
clean numbers (every run here shares 2 cores with other jobs).

    python benchmarks/mamba_cpu.py [--runs 5] [--ref-runs 3] [--length 24000] [--compile]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from _timing import median_time

from upsr.nn import Mamba, selective_scan


def reference_scan(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm ``selective_scan_ref`` math, float32, B/C as [Bsz, N, L], softplus on."""
    delta = F.softplus(delta + delta_bias[:, None])
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for da, dbu, c in zip(delta_a.unbind(2), delta_b_u.unbind(2), C.unbind(2)):
        x = da * x + dbu
        ys.append(torch.einsum("bdn,bn->bd", x, c))
    y = torch.stack(ys, dim=2)
    return (y + u * D[:, None]) * F.silu(z)


def scan_inputs(bsz: int, di: int, n: int, length: int, grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(bsz, di, length, generator=g),  # u
        torch.randn(bsz, di, length, generator=g) * 0.5,  # delta (before bias / softplus)
        -(torch.rand(di, n, generator=g) * 19.75 + 0.25),  # A
        torch.randn(bsz, n, length, generator=g),  # B
        torch.randn(bsz, n, length, generator=g),  # C
        torch.rand(di, generator=g) * 3 - 1,  # D
        torch.randn(bsz, di, length, generator=g),  # z
        torch.randn(di, generator=g) - 3,  # delta_bias: softplus ≈ 0.05
    ]
    return [x.requires_grad_(grad) for x in xs]


def ours(u, delta, A, B, C, D, z, bias):
    return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend="cpu")


def fwd(fn, args):
    def run():
        with torch.no_grad():
            fn(*args)
    return run


def fwd_bwd(fn, args, weight):
    def run():
        for a in args:
            a.grad = None
        (fn(*args) * weight).sum().backward()
    return run


def compile_times() -> tuple[float, float]:
    """First-call time in a fresh process: cold (empty numba cache) and warm (cache filled)."""
    code = ("import time,torch;t=time.perf_counter();from upsr.nn import selective_scan;"
            "x=torch.randn(1,4,100,requires_grad=True);"
            "selective_scan(x,x,-torch.ones(4,16),torch.randn(1,16,100),torch.randn(1,16,100),"
            "backend='cpu').sum().backward();print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                    capture_output=True, text=True).stdout) for _ in range(2)]
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ref-runs", type=int, default=3)
    ap.add_argument("--length", type=int, default=24000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time first-call JIT compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bsz, di, n, length = 1, 64, 16, args.length
    updates = bsz * di * n * length
    print(f"selective scan B={bsz} Di={di} N={n} L={length} float32, {args.threads} threads, "
          f"median of {args.runs} (ours) / {args.ref_runs} (reference) runs")

    x = scan_inputs(bsz, di, n, length, grad=False)
    with torch.no_grad():
        err = (ours(*x) - reference_scan(*x)).norm() / reference_scan(*x).norm()
    xg = scan_inputs(bsz, di, n, length, grad=True)
    weight = torch.randn(bsz, di, length)
    rows = []
    for name, mk in (("forward", lambda f, a: fwd(f, a)),
                     ("forward+backward", lambda f, a: fwd_bwd(f, a, weight))):
        a = x if name == "forward" else xg
        t_ours = median_time(mk(ours, a), args.runs)
        t_ref = median_time(mk(reference_scan, a), args.ref_runs)
        rows.append((name, t_ours, t_ref))
    print(f"{'':18}{'upsr cpu (s)':>14}{'reference (s)':>15}{'speed-up':>10}{'Mupd/s':>10}")
    for name, t_ours, t_ref in rows:
        print(f"{name:18}{t_ours:14.4f}{t_ref:15.3f}{t_ref / t_ours:9.1f}x"
              f"{updates / t_ours / 1e6:10.0f}")
    print(f"relative L2 difference ours vs reference (float32): {err:.2e}")

    print("\nMamba(d_model=32) block (Di=64, N=16), B=1, per second of audio:")
    m = Mamba(32)
    print(f"{'steps/s of audio':>18}{'forward (s)':>13}{'fwd+bwd (s)':>13}")
    for steps in (24000, 48000):
        h = torch.randn(1, steps, 32)
        hg = h.clone().requires_grad_()
        t_f = median_time(fwd(m, [h]), args.runs)

        def train_step(hg=hg):
            m.zero_grad()
            m(hg).square().mean().backward()

        t_fb = median_time(train_step, args.runs)
        print(f"{steps:>18}{t_f:13.4f}{t_fb:13.4f}")

    if args.compile:
        cold, warm = compile_times()
        print(f"\nfirst call in a new process (import + JIT fwd+bwd): cold cache {cold:.1f} s, "
              f"cached {warm:.1f} s")


if __name__ == "__main__":
    main()
