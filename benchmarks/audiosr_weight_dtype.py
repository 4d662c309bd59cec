"""What storing AudioSR's weights in half precision costs, against float32's own noise.

For each network of the parity fixtures (small configurations, fixture inputs and weights,
fixture README §7–§9) prints the relative L2 change of the output when the weights are rounded
to float16 or bfloat16 (and computed in float32), next to the float32-vs-float64 difference of
the same computation (the float32 noise). This is the measurement behind the float32 default of
``upsr.models.audiosr.importer.convert_official``. Accuracy only, no timing.

    python benchmarks/audiosr_weight_dtype.py [--fixtures DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from upsr.models.audiosr.unet import UNet, UNetConfig
from upsr.models.audiosr.vae import AutoencoderKL, VAEConfig
from upsr.models.audiosr.vocoder import Vocoder, VocoderConfig


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


CASES = {
    "VAE decode(encode(x).mean)": ("audiosr_vae", AutoencoderKL, VAEConfig.small(),
                                   lambda m, t: m.decode(m.encode(t["input"]).mean)),
    "VAE encoder mean": ("audiosr_vae", AutoencoderKL, VAEConfig.small(),
                         lambda m, t: m.encode(t["input"]).mean),
    "vocoder": ("audiosr_vocoder", Vocoder, VocoderConfig.small(), lambda m, t: m(t["input"])),
    "U-Net": ("audiosr_unet", UNet, UNetConfig.small(),
              lambda m, t: m(t["input"], t["timesteps"])),
}


def build(cls: type, cfg: object, dtype: torch.dtype,
          weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    m = cls(cfg).to(dtype).eval()
    m.load_state_dict({k: v.to(dtype) for k, v in weights.items()})
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.environ.get("UPSR_FIXTURES") or str(
        Path(__file__).resolve().parents[1].parent / "shared" / "fixtures")
    parser.add_argument("--fixtures", default=default)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'output':<28} {'f32 vs f64':>11} {'fp16 weights':>13} {'bf16 weights':>13}")
    for label, (name, cls, cfg, run) in CASES.items():
        tensors = load_file(str(Path(args.fixtures) / f"{name}.safetensors"))
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}

        inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}
        with torch.no_grad():
            ref = run(build(cls, cfg, torch.float32, state), tensors)
            row = [rel_l2(ref, run(build(cls, cfg, torch.float64, state), inputs64))]
            for half in (torch.float16, torch.bfloat16):
                rounded = {k: v.to(half).float() for k, v in state.items()}
                row.append(rel_l2(run(build(cls, cfg, torch.float32, rounded), tensors), ref))
        print(f"{label:<28} {row[0]:>11.2e} {row[1]:>13.2e} {row[2]:>13.2e}")


if __name__ == "__main__":
    main()
