"""``upsr enhance PATH... -o OUT``: restore files and whole folder trees."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from upsr.cli import _common


class Fmt(str, Enum):
    wav = "wav"
    flac = "flac"


class Depth(str, Enum):
    pcm16 = "16"
    pcm24 = "24"
    float32 = "32f"


class FullBand(str, Enum):
    copy = "copy"
    skip = "skip"
    process = "process"


class CutoffMethod(str, Enum):
    rolloff = "rolloff"
    band_edge = "band-edge"


class Stereo(str, Enum):
    independent = "independent"
    mid_side = "mid-side"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def _device(want: Device) -> str:
    import torch

    from upsr.errors import UsageError

    if want is Device.auto:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if want is Device.cuda and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if want is Device.mps:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: MPS is not available")
    return want.value


def enhance(
    paths: Annotated[list[str], typer.Argument(help="Audio files, folders (recursive) or '-'.",
                                               show_default=False)],
    out: Annotated[str, typer.Option("-o", "--out", help="Output folder (mirrors the input "
                                     "tree), or '-' for stdout.")] = "restored",
    model: Annotated[str, typer.Option("-m", "--model", help="Registry name or checkpoint "
                                       "file; 'sbr' needs no weights.")] = "sbr",
    bitrate_auto: Annotated[bool, typer.Option("--bitrate-auto", help="Per file: read the "
                            "codec/bitrate or estimate the cutoff, skip full-band files, pick "
                            "the matching model variant.")] = False,
    full_band: Annotated[FullBand, typer.Option("--full-band", help="With --bitrate-auto: what "
                         "to do with full-band files.")] = FullBand.copy,
    device: Annotated[Device, typer.Option("--device", help="Where the model runs.")
                      ] = Device.auto,
    precision: Annotated[Precision, typer.Option("--precision", help="bf16 autocast where "
                         "the device computes bf16 natively and the model's measured bf16 "
                         "error is small (auto), always (bf16) or never (fp32).")
                         ] = Precision.auto,
    fmt: Annotated[Fmt | None, typer.Option("--format", help="Output format (default: FLAC "
                   "for FLAC/lossy inputs, WAV otherwise).", show_default=False)] = None,
    bit_depth: Annotated[Depth | None, typer.Option("--bit-depth", help="Output bit depth "
                         "(default: the input's; float where PCM would clip).",
                         show_default=False)] = None,
    sr: Annotated[int | None, typer.Option("--sr", help="Resample the output to this rate.",
                                           show_default=False)] = None,
    chunk_s: Annotated[float, typer.Option("--chunk-s", help="Seconds kept per chunk.")] = 10.0,
    overlap_s: Annotated[float, typer.Option("--overlap-s", help="Cross-fade seconds between "
                         "chunks (context is added on top).")] = 0.25,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Chunk rows per forward "
                          "pass; chunks of several files are batched together (default: 1 on "
                          "CPU, where batching only costs memory; 4 on GPUs).",
                          show_default=False)] = None,
    no_lf_replace: Annotated[bool, typer.Option("--no-lf-replace", help="Do not splice the "
                             "input back below its cutoff.")] = False,
    cutoff: Annotated[float | None, typer.Option("--cutoff", help="Force the input cutoff "
                      "(Hz) instead of detecting it.", show_default=False)] = None,
    cutoff_method: Annotated[CutoffMethod, typer.Option("--cutoff-method", help="Cutoff "
                             "detector: 0.985 roll-off (AudioSR) or -70 dB band edge.")
                             ] = CutoffMethod.rolloff,
    stereo: Annotated[Stereo, typer.Option("--stereo", help="Process stereo as L/R or as "
                      "mid/side.")] = Stereo.independent,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs "
                         "(otherwise they count as done).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")
                       ] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write a JSON report: per "
                      "file decisions, model, timings.", show_default=False)] = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="Do not copy tags.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Local worker processes, each "
                    "with threads/N torch threads.")] = 1,
    shard: Annotated[str | None, typer.Option("--shard", metavar="K/N", help="Only the files "
                     "whose relative output path hashes to K of N (0 <= K < N).",
                     show_default=False)] = None,
    claim_timeout: Annotated[float, typer.Option("--claim-timeout", help="Seconds after which "
                             "another worker's unrefreshed claim on a file is taken over.")
                             ] = 600.0,
    quiet: _common.Quiet = False,
    verbose: _common.Verbose = 0,
) -> None:
    """Restore band-limited / MP3-damaged audio; the low band is kept exactly."""
    _common.setup_logging(quiet, verbose)
    from upsr.errors import UsageError
    from upsr.infer import workers
    from upsr.infer.batch import BatchOptions, check_writable, plan_items
    from upsr.infer.engine import EnhanceOptions

    rank = workers.dist_env()
    where = workers.device_for_rank(_device(device), rank)
    shard_kn = workers.parse_shard(shard) if shard is not None else None
    if jobs < 1 or claim_timeout <= 0:
        raise UsageError("--jobs must be >= 1 and --claim-timeout > 0")
    if report is not None:
        report = workers.report_path(report, rank)
    if batch_size is None:
        batch_size = 1 if where == "cpu" else 4
    try:
        engine = EnhanceOptions(chunk_s=chunk_s, overlap_s=overlap_s, batch_size=batch_size,
                                lf_replace=not no_lf_replace, stereo=stereo.value, out_sr=sr)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if sr is not None and not 1000 <= sr <= 768000:
        raise UsageError(f"--sr {sr}: must be between 1000 and 768000")
    if cutoff is not None and cutoff <= 0:
        raise UsageError("--cutoff must be > 0")
    opts = BatchOptions(engine=engine, format=fmt.value if fmt else None,
                        bit_depth=bit_depth.value if bit_depth else None, overwrite=overwrite,
                        bitrate_auto=bitrate_auto, full_band=full_band.value, cutoff_hz=cutoff,
                        cutoff_method=cutoff_method.value.replace("-", "_"),
                        copy_tags=not no_tags, device=where, precision=precision.value)
    from upsr import models

    models.load_model(model)  # fail before any work on a bad --model
    items = plan_items(paths, out, opts.format)
    if not items:
        raise UsageError("no audio files found in " + ", ".join(paths))
    items = workers.select_shard(items, out, shard_kn)
    if dry_run:
        for it in items:
            state = "exists, skip" if (it.dst != "-" and Path(it.dst).exists()
                                       and not overwrite) else "restore"
            print(f"{it.src} -> {it.dst} ({state})")
        return
    check_writable(out)

    counts: dict[str, int] = {}
    total_s = [0.0]
    t0 = time.perf_counter()

    def on_item(item) -> None:
        counts[item.status] = counts.get(item.status, 0) + 1
        if item.status == "failed":
            _common.error(item.error or f"{item.src}: failed")
        elif verbose and not quiet:
            print(f"upsr: {item.status}: {item.src} -> {item.dst}", file=__import__("sys").stderr)

    progress_cb = None
    bar = None
    if _common.show_progress(quiet):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(TextColumn("enhance"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
                       console=_common.stderr_console(), transient=True)
        task = bar.add_task("files", total=len(items), speed="")
        inner = on_item

        def on_item(item) -> None:  # type: ignore[no-redef]
            inner(item)
            bar.advance(task)

        def progress_cb(seconds: float) -> None:
            total_s[0] += seconds
            rate = total_s[0] / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, speed=f"{rate:.1f} s audio/s")

        bar.start()
    try:
        done = workers.run_workers(items, model, opts, out, jobs=jobs, rank=rank,
                                   claim_timeout_s=claim_timeout, on_item=on_item,
                                   progress=progress_cb)
    finally:
        if bar is not None:
            bar.stop()
    if report is not None:
        from upsr.fsutil import atomic_write_text

        atomic_write_text(report, json.dumps({"model": model, **workers.worker_info(
            rank, shard_kn, jobs), "files": [it.record() for it in done]}, indent=2) + "\n")
    if not quiet:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        wall = time.perf_counter() - t0
        audio = sum(it.audio_s for it in done if it.status == "done")
        speed = f"; {audio / wall:.1f} s of audio per second" if audio and wall else ""
        print(f"upsr: {summary}{speed}", file=__import__("sys").stderr)
    if counts.get("failed"):
        raise typer.Exit(_common.EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("enhance")(enhance)
