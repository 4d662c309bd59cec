"""``upsr enhance PATH... -o OUT``: restore files and whole folder trees."""

from __future__ import annotations

import json
import sys
import time
import typing as tp
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
    paths: Annotated[list[str], typer.Argument(metavar="PATH",
                                               help="Audio files, folders (recursive) or "
                                               "'-' (stdin, spooled to a temporary file "
                                               "first).",
                                               show_default=False)],
    out: Annotated[str, typer.Option("-o", "--out", metavar="DIR",
                                     help="Output folder (mirrors the input "
                                     "tree), or '-' for stdout (held in memory until the "
                                     "end).")] = "restored",
    model: Annotated[str, typer.Option("-m", "--model", metavar="NAME|FILE",
                                       help="Registry name or checkpoint "
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
                         "error is small and it has >= 1 M parameters (auto), always (bf16) "
                         "or never (fp32).")
                         ] = Precision.auto,
    fmt: Annotated[Fmt | None, typer.Option("--format", help="Output format (default: FLAC "
                   "for FLAC/lossy inputs, WAV otherwise).", show_default=False)] = None,
    bit_depth: Annotated[Depth | None, typer.Option("--bit-depth", help="Output bit depth "
                         "(default: the input's; float where PCM would clip).",
                         show_default=False)] = None,
    sr: Annotated[int | None, typer.Option("--sr", metavar="HZ",
                                           help="Resample the output to this rate.",
                                           show_default=False)] = None,
    chunk_s: Annotated[float, typer.Option("--chunk-s", metavar="SECONDS",
                                           help="Seconds kept per chunk.")] = 10.0,
    overlap_s: Annotated[float, typer.Option("--overlap-s", metavar="SECONDS",
                                             help="Cross-fade seconds between "
                         "chunks (context is added on top).")] = 0.25,
    batch_size: Annotated[int | None, typer.Option("--batch-size", metavar="N",
                                                   help="Chunk rows per forward "
                          "pass; chunks of several files are batched together (default: 1 on "
                          "CPU, where batching only costs memory; 4 on GPUs).",
                          show_default=False)] = None,
    no_lf_replace: Annotated[bool, typer.Option("--no-lf-replace", help="Do not splice the "
                             "input back below its cutoff.")] = False,
    cutoff: Annotated[float | None, typer.Option("--cutoff", metavar="HZ",
                                                 help="Force the input cutoff "
                      "(Hz) instead of detecting it.", show_default=False)] = None,
    cutoff_method: Annotated[CutoffMethod, typer.Option("--cutoff-method", help="Where the "
                             "kept band ends: band-edge (-70 dB edge, or the container's "
                             "codec low-pass) or AudioSR's 0.985 roll-off (replaces real "
                             "content between roll-off and edge).")] = CutoffMethod.band_edge,
    stereo: Annotated[Stereo, typer.Option("--stereo", help="Process stereo as L/R or as "
                      "mid/side.")] = Stereo.independent,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs "
                         "(otherwise they count as done).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")
                       ] = False,
    report: Annotated[Path | None, typer.Option("--report", metavar="FILE", help="Write a JSON "
                      "report: per file decisions, model, timings; a path ending in .html "
                      "writes a page with before/after spectrograms and players of an excerpt "
                      "per file.", show_default=False)] = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="Do not copy tags.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights: a "
                       "--model that is not installed is an error (also UPSR_OFFLINE=1, "
                       "HF_HUB_OFFLINE=1); otherwise published weights are pulled on first "
                       "use.")] = False,
    steps: Annotated[int | None, typer.Option("--steps", metavar="N", help="Diffusion models: "
                     "sampler steps (the model's config 'steps').", show_default=False)] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", metavar="NAME", help="Diffusion "
                       "models: sampler (config 'sampler'; mambawave: ddim, ddpm, official; "
                       "audiosr: ddim, dpmpp-2m).", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Diffusion models: "
                    "noise seed (config 'seed'); a seed fixes the output.",
                    show_default=False)] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", metavar="SCALE", help="Diffusion "
                        "models with classifier-free guidance: its scale (config 'guidance').",
                        show_default=False)] = None,
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
    from upsr.infer import malloc

    malloc.pause_gc()  # while torch and the model load (upsr's own process only)
    from upsr.errors import UsageError
    from upsr.infer import workers
    from upsr.infer.batch import BatchOptions, plan_items
    from upsr.infer.engine import EnhanceOptions

    _common.require_inputs(paths)
    if out != "-":
        _common.check_output_dir(out, "-o")
    rank = workers.dist_env()
    where = workers.device_for_rank(_device(device), rank)
    shard_kn = workers.parse_shard(shard) if shard is not None else None
    if jobs < 1 or claim_timeout <= 0:
        raise UsageError("--jobs must be >= 1 and --claim-timeout > 0")
    if report is not None:
        report = workers.report_path(report, rank)
        _common.check_output_file(report, "--report")
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
    if fmt is not None and fmt.value == "flac" and bit_depth is not None \
            and bit_depth.value == "32f":
        raise UsageError("--bit-depth 32f: FLAC cannot store float samples; use --format wav "
                         "or --bit-depth 24")
    overrides = {k: v for k, v in (("steps", steps), ("sampler", sampler), ("seed", seed),
                                   ("guidance", guidance)) if v is not None}
    opts = BatchOptions(engine=engine, format=fmt.value if fmt else None,
                        bit_depth=bit_depth.value if bit_depth else None, overwrite=overwrite,
                        bitrate_auto=bitrate_auto, full_band=full_band.value, cutoff_hz=cutoff,
                        cutoff_method=cutoff_method.value.replace("-", "_"),
                        copy_tags=not no_tags, device=where, precision=precision.value,
                        model_overrides=tuple(overrides.items()))
    from upsr import models
    from upsr.infer.batch import family_ref
    from upsr.models import hub

    first = family_ref(model, bitrate_auto)  # --bitrate-auto: installed variants suffice
    pending = hub.pending_pull(first) if dry_run and not offline else None
    loaded: dict[str, object] = {}  # models by reference, for this process's worker
    if pending is not None:  # a dry run downloads nothing; it says that the run will
        print(f"upsr: {pending.name} is not installed: the run downloads it from "
              f"{pending.where} first", file=sys.stderr)
    else:  # fail (or fetch weights) before any work on a bad --model/option
        checked = models.load_model(first, pull=not offline, **overrides)
        if jobs == 1:  # this process restores the files: the model is not loaded twice
            loaded[first] = checked if where == "cpu" else checked.to(where)
        del checked
    from upsr.audio.quiet import captured

    with captured():
        items = plan_items(paths, out, opts.format)
    if not items:
        raise UsageError("no audio files found in " + ", ".join(paths))
    items = workers.select_shard(items, out, shard_kn)
    malloc.freeze_gc()  # torch's objects: out of every later collector pass
    if dry_run:
        _print_plan(items, opts)
        return
    malloc.for_inference()  # large temporaries reused, not re-mapped, call after call

    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    _common.on_interrupt(lambda: _interrupt_note(counts, len(items)))

    def on_item(item) -> None:
        counts[item.status] = counts.get(item.status, 0) + 1
        if item.status == "failed":
            _common.error(item.error or f"{item.src}: failed")
        elif verbose and not quiet:
            print(f"upsr: {item.status}: {item.src} -> {item.dst}", file=sys.stderr)

    bar = _AudioProgress() if _common.show_progress(quiet) else None
    try:
        done = workers.run_workers(items, model, opts, out, jobs=jobs, rank=rank,
                                   claim_timeout_s=claim_timeout, cache=loaded,
                                   on_item=on_item if bar is None else bar.wrap(on_item),
                                   progress=bar.advance if bar else None,
                                   on_planned=bar.start if bar else None)
    finally:
        if bar is not None:
            bar.stop()
        malloc.freeze_gc()  # the exit's own collector pass skips what is alive now
    if report is not None:
        from upsr.fsutil import atomic_write_text

        records = [it.record() for it in done]
        if report.suffix.lower() in (".html", ".htm"):
            from upsr.eval.html import enhance_report, run_meta

            enhance_report(report, records, model, run_meta())
        else:
            atomic_write_text(report, json.dumps({"model": model, **workers.worker_info(
                rank, shard_kn, jobs), "files": records}, indent=2) + "\n")
    if not quiet:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        wall = time.perf_counter() - t0
        audio = sum(it.audio_s for it in done if it.status == "done")
        speed = f"; {audio / wall:.1f} s of audio per second" if audio and wall else ""
        print(f"upsr: {summary}{speed}", file=sys.stderr)
    if counts.get("failed"):
        raise typer.Exit(_common.EXIT_FAILED)


_PLAN_WORDS = {"exists": "exists, skip", "copied": "full band, copy",
               "skipped-full-band": "full band, skip", "planned": "restore"}


def _print_plan(items: list, opts) -> None:
    """``--dry-run``: the decisions of the run, made by the same code (``batch.prepare`` with
    ``act=False``); files are analysed only where the decision depends on it."""
    import tempfile

    from upsr.infer.batch import prepare

    with tempfile.TemporaryDirectory(prefix="upsr-") as tmp:
        for it in items:
            if opts.bitrate_auto or it.src == "-":
                prepare(it, opts, Path(tmp), act=False)
            else:
                exists = it.dst != "-" and Path(it.dst).exists() and not opts.overwrite
                it.status = "exists" if exists else "planned"
            state = _PLAN_WORDS.get(it.status, it.status)
            if it.status == "failed":
                state = f"fails: {it.error}"
            elif it.status == "planned" and it.cutoff_hz:
                state += f", cut-off {it.cutoff_hz / 1000:.1f} kHz"
            print(f"{it.src} -> {it.dst} ({state})")


def _interrupt_note(counts: dict[str, int], total: int) -> str:
    finished = sum(n for k, n in counts.items() if k != "failed")
    return (f"{finished} of {total} file(s) finished and kept; no partial file was left; "
            f"rerun the same command to do the rest")


class _AudioProgress:
    """A progress bar in seconds of audio: one total line and a line per file in progress,
    each with its rate and ETA (terminal only)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed:.0f}/{task.total:.0f} s audio"),
                            TimeRemainingColumn(), console=_common.stderr_console(),
                            transient=True)
        self.total: tp.Any = None
        self.planned_s = 0.0
        self.tasks: dict[int, tp.Any] = {}

    def start(self, planned: list) -> None:
        """Add ``planned`` to the total (called once per engine call: claimed workers plan
        their files group by group)."""
        self.planned_s += sum(it.audio_s for it in planned)
        if self.total is None:
            self.total = self.bar.add_task("enhance", total=self.planned_s)
            self.bar.start()
        else:
            self.bar.update(self.total, total=self.planned_s)

    def advance(self, item, seconds: float) -> None:
        if self.total is None:
            return
        key = id(item)
        if key not in self.tasks:
            name = Path(item.src).name
            self.tasks[key] = self.bar.add_task(f"  {name[:40]}", total=item.audio_s)
        self.bar.advance(self.tasks[key], seconds)
        self.bar.advance(self.total, seconds)

    def wrap(self, on_item):
        def inner(item) -> None:
            task = self.tasks.pop(id(item), None)
            if task is not None:
                self.bar.remove_task(task)
            on_item(item)
        return inner

    def stop(self) -> None:
        if self.total is not None:
            self.bar.stop()


def register(app: typer.Typer) -> None:
    app.command("enhance")(enhance)
