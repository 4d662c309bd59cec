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

    python benchmarks/mamba_cpu.py [--runs 5] [--ref-runs 3] [--length 24000] [--compile] [--stages]

Measured 2026-12-01 on this 2-core AMD EPYC (AVX-512) while 4 other engineers ran jobs
(load average 5.5-12): wall times were inflated 3-10× and swung by 10× between identical runs,
so the A/B below uses CPU seconds (``time.process_time``) at 1 thread, base and new code
alternating in separate processes, 3 rounds × median of 7 (medians of the 3 rounds shown).

Inference forward of Mamba(d_model=32) on [1, 48000, 32] (Di=64, N=16), CPU ms, 1 thread:

=============================  =====  =====
stage                          base   new
=============================  =====  =====
in_proj (torch GEMM)            13.6   11.6
causal conv + SiLU (numba)       5.4    5.1
x_proj (torch GEMM)              6.3    4.7
dt_proj + softplus (torch)       8.2     —  (fused into the scan)
scan + D skip + gate (numba)    73.2   25.0
out_proj (torch GEMM)            3.5    4.0
whole Mamba block              155.3   68.7
whole BiMamba block            313.4  116.1
=============================  =====  =====

Where the scan time went: the old kernel ran one channel at a time, its 16 states in one
vector with a horizontal sum per step; the new one runs channels innermost (state [N, block],
B_t/C_t broadcast, no horizontal sums), computes exp(Δ·A) as 2**(Δ·A·log2 e) (fewer
instructions than exp's Cody–Waite reduction) and reads channel rows through slices (offset
indices had compiled to gathers). Synthetic timing of the kernel alone: ≈0.4 ns per state
update at 64 channels per job, plus a fixed ≈200 ns per time step and job (from single-thread
timings at 16/32/64 channels per job: 146/219/411 ns per step), so 2 threads (2 jobs of 32
channels) can give about ×1.9, not ×2. With the scan ~3× faster, the three torch
GEMMs (≈45 % of the block's CPU time in cProfile) are now the largest part.

Same script at 2 threads, 3 rounds (load 9-11), CPU ms / wall ms: Mamba block 247/598,
211/515, 214/537 (base) vs 154/379, 147/381, 119/242 (new); BiMamba 609/1518, 596/1501,
665/1677 vs 243/612, 216/532, 207/424.

``benchmarks/mamba_cpu.py --length 24000 --runs 5 --ref-runs 1`` at 2 threads, alternating
base/new (load 5.5-6.6; wall seconds, unreliable as said): Mamba block forward at L=48000
0.439 / 0.531 s (base) vs 0.244 / 0.314 s (new); BiMamba 0.41 / 0.45 s (new only).

torch.compile (inductor, 2 threads, same load): on the default block the numba calls are graph
breaks; first call 18.0 s (compile), then 0.374 s per call vs 0.304 s eager — no gain, not
adopted. On the pure-torch ``backend="chunked"`` block at L=4800: eager 6.99 s, compiled
0.167 s after a 38.1 s compile — 40× better than eager chunked but slower than the numba path
on 10× the length (0.24-0.31 s at L=48000 above), so it only matters for CPUs without numba.

First Mamba inference call in a new process with an empty NUMBA_CACHE_DIR (import + JIT,
``Mamba(8)`` forward, 2 runs each alternating): base 6.3 / 6.1 CPU s (14.1 / 15.2 s wall),
new 8.0 / 8.3 CPU s (19.5 / 21.0 s wall); cached 2.1-2.2 CPU s for both: the fused kernel
costs ≈2 CPU s more to compile once.

Second round (chunked blocks, :mod:`upsr.nn.mamba_chunked`): the channel-last scan and conv
kernels are now per-job bodies (``_scan_cl_job``, ``_conv_cl_rows``) called from the parallel
drivers (``prange``, the whole-sequence path of Mamba/BiMamba) and from serial ones (one lane
of the chunked path). First Wave-U-Mamba forward in a new process (import, build, 0.1 s of
audio) with an empty NUMBA_CACHE_DIR, main (6ecba3c) / this tree alternating, 2 rounds, load
7-9: cold 10.7 / 12.1 CPU s vs 7.2 / 6.4 CPU s (102 / 154 s vs 64 / 95 s wall); cached
3.5 / 3.8 vs 2.5 / 2.4 CPU s: the serial kernels it compiles instead of the ``prange`` ones
compile faster (parfors lowering is the slow part).
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

from upsr.nn import BiMamba, Mamba, selective_scan


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


def compile_times() -> list[tuple[str, float, float]]:
    """First-call time in a fresh process, cold (empty numba cache) and warm (cache filled):
    the training kernels (scan fwd+bwd) and the inference path (Mamba and BiMamba forward)."""
    head = ("import time,torch;t=time.perf_counter();"
            "from upsr.nn import BiMamba,Mamba,selective_scan;")
    cases = [
        ("training scan fwd+bwd",
         "x=torch.randn(1,4,100,requires_grad=True);selective_scan(x,x,-torch.ones(4,16),"
         "torch.randn(1,16,100),torch.randn(1,16,100),backend='cpu').sum().backward();"),
        ("inference Mamba+BiMamba",
         "h=torch.randn(1,100,8)\nwith torch.no_grad(): Mamba(8)(h); BiMamba(8)(h)\n"),
    ]
    out = []
    for name, body in cases:
        code = head + body + "\nprint(time.perf_counter()-t)"
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            t = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      capture_output=True, text=True).stdout) for _ in range(2)]
        out.append((name, t[0], t[1]))
    return out


def stage_times(length: int, runs: int) -> list[tuple[str, float]]:
    """Median seconds of each stage of the Mamba(32) inference forward (channel-last path)."""
    from upsr.nn._scan_numba import conv_silu_channel_last, mamba_scan_channel_last

    m = Mamba(32).eval()
    h = torch.randn(1, length, 32)
    with torch.inference_mode():
        xz = m.in_proj(h)
        x = conv_silu_channel_last(xz, m.conv1d.weight, m.conv1d.bias, m.d_inner)
        xd = F.linear(x, m.x_proj.weight)
        A = -torch.exp(m.A_log)
        y, _ = mamba_scan_channel_last(x, xd, m.dt_proj.weight, m.dt_proj.bias, A, m.D, xz,
                                       m.d_inner)
        stages = [
            ("in_proj (torch GEMM)", lambda: m.in_proj(h)),
            ("causal conv + SiLU (numba)", lambda: conv_silu_channel_last(
                xz, m.conv1d.weight, m.conv1d.bias, m.d_inner)),
            ("x_proj (torch GEMM)", lambda: F.linear(x, m.x_proj.weight)),
            ("dt_proj+softplus+scan+gate (numba)", lambda: mamba_scan_channel_last(
                x, xd, m.dt_proj.weight, m.dt_proj.bias, A, m.D, xz, m.d_inner)),
            ("out_proj (torch GEMM)", lambda: m.out_proj(y)),
            ("whole block", lambda: m(h)),
        ]
        return [(name, median_time(fn, runs)) for name, fn in stages]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ref-runs", type=int, default=3)
    ap.add_argument("--length", type=int, default=24000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time first-call JIT compile")
    ap.add_argument("--stages", action="store_true",
                    help="also time each stage of the Mamba block's inference forward")
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
    bi = BiMamba(32).eval()
    print(f"{'steps/s of audio':>18}{'forward (s)':>13}{'fwd+bwd (s)':>13}{'BiMamba fwd (s)':>17}")
    for steps in (24000, 48000):
        h = torch.randn(1, steps, 32)
        hg = h.clone().requires_grad_()
        t_f = median_time(fwd(m, [h]), args.runs)
        t_bi = median_time(fwd(bi, [h]), args.runs)

        def train_step(hg=hg):
            m.zero_grad()
            m(hg).square().mean().backward()

        t_fb = median_time(train_step, args.runs)
        print(f"{steps:>18}{t_f:13.4f}{t_fb:13.4f}{t_bi:17.4f}")

    if args.stages:
        print("\nMamba(d_model=32) inference forward by stage, L=48000:")
        for name, t in stage_times(48000, args.runs):
            print(f"  {name:38}{t * 1e3:9.2f} ms")

    if args.compile:
        for name, cold, warm in compile_times():
            print(f"\nfirst call in a new process ({name}, import + JIT): cold cache "
                  f"{cold:.1f} s, cached {warm:.1f} s", end="")
        print()


if __name__ == "__main__":
    main()
