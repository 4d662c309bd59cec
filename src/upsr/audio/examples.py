"""Demo audio for ``upsr example``: a few band-limited files in a small nested tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from upsr.audio import synth
from upsr.errors import UsageError

# (relative path, sample rate, channels, cutoff Hz, subtype, seconds, seed)
_EXAMPLES = [
    ("tone_4k.wav", 44100, 1, 4000.0, "PCM_16", 4.0, 1),
    ("music_8k.flac", 44100, 2, 8000.0, "PCM_24", 6.0, 2),
    ("archive/tape_11k.wav", 48000, 2, 11000.0, "PCM_16", 5.0, 3),
]


def write_examples(out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write the demo files under ``out_dir``; refuse to replace files unless ``overwrite``."""
    out_dir = Path(out_dir)
    targets = [out_dir / rel for rel, *_ in _EXAMPLES]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists (use --overwrite to replace it)")
    written = []
    for (rel, sr, ch, cutoff, subtype, seconds, seed), path in zip(_EXAMPLES, targets):
        x = synth.music_like(seconds, sr, channels=ch, seed=seed)
        if rel.startswith("tone"):
            x = np.stack([synth.harmonic_tone(seconds, sr, f0_hz=196.0)] * ch)
        y = synth.brickwall(x, sr, cutoff)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), y.T, sr, subtype=subtype)
        written.append(path)
    return written
