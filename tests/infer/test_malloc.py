"""upsr.infer.malloc: glibc keeps large blocks in the heap for inference in a process upsr
owns (or, with UPSR_MALLOC=compact, maps every block above 64 KiB on its own), leaves the
user's settings and other platforms alone, and changes no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from upsr.audio import synth
from upsr.errors import UsageError
from upsr.infer import malloc

REPO = Path(__file__).resolve().parents[2]

# The ``upsr`` command as the console script runs it (main() without argv: upsr owns the
# process), then probe allocations: does glibc still serve 64 MiB with mmap? And 1 MiB right
# after an 8 MiB mapping was freed (which raises glibc's own, dynamic threshold above 1 MiB)?
CHILD = """\
import ctypes, json, os, sys
from upsr.cli.main import main
from upsr.infer import malloc
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = malloc.mapped_bytes()
probe = libc.malloc(64 << 20)
mapped = malloc.mapped_bytes() - before
libc.free(probe)
libc.free(libc.malloc(8 << 20))
before = malloc.mapped_bytes()
probe = libc.malloc(1 << 20)
small = malloc.mapped_bytes() - before
libc.free(probe)
print(json.dumps({"code": code, "mapped": mapped, "small_mapped": small,
                  "mode": malloc.applied_mode(),
                  "exported": os.environ.get("MALLOC_MMAP_MAX_"),
                  "threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}))
"""


def _glibc_only() -> None:
    if malloc.glibc() is None or malloc.mapped_bytes() is None:
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("UPSR_MALLOC", "GLIBC_TUNABLES")}
    env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", **extra)
    return env


def _enhance(args: list[str], env: dict[str, str]) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, "enhance", *args, "-q"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_apollo(tmp_path_factory) -> tuple[Path, Path]:
    """A 16-channel one-layer Apollo checkpoint and a 3 s band-limited stereo file."""
    import torch

    from upsr import checkpoint, models

    d = tmp_path_factory.mktemp("malloc")
    torch.manual_seed(0)
    checkpoint.save(d / "apollo.safetensors", models.build("apollo", feature_dim=16, layer=1))
    x = synth.brickwall(synth.music_like(3.0, 44100, channels=2, seed=4), 44100, 8000)
    sf.write(str(d / "in.wav"), x.T, 44100, subtype="PCM_16")
    return d / "apollo.safetensors", d / "in.wav"


def test_neural_run_keeps_large_blocks_in_the_heap_and_outputs_are_unchanged(tiny_apollo,
                                                                               tmp_path):
    _glibc_only()
    ckpt, wav = tiny_apollo
    runs = {}
    for name, env in (("reuse", _clean_env()),
                      ("compact", _clean_env(UPSR_MALLOC="compact")),
                      ("opted-out", _clean_env(UPSR_MALLOC="default")),
                      ("user", _clean_env(MALLOC_ARENA_MAX="4"))):
        out = tmp_path / name
        runs[name] = _enhance([str(wav), "-o", str(out), "--model", str(ckpt),
                               "--device", "cpu", "--precision", "fp32"], env)
        runs[name]["bytes"] = (out / "in.wav").read_bytes()
    reuse, compact = runs["reuse"], runs["compact"]
    assert reuse["mode"] == "reuse" and reuse["mapped"] == 0 and reuse["small_mapped"] == 0
    assert reuse["exported"] == "0"   # --jobs workers start with the same setting
    assert reuse["threshold"] is None
    # compact: both blocks are mappings of their own (the threshold stays at 64 KiB)
    assert compact["mode"] == "compact" and compact["mapped"] >= 64 << 20
    assert compact["small_mapped"] >= 1 << 20
    assert compact["threshold"] == "65536" and compact["exported"] is None
    for name in ("opted-out", "user"):   # glibc's default: a 64 MiB block is an mmap, and
        run = runs[name]                 # its threshold has risen above 1 MiB by then
        assert run["mode"] is None and run["mapped"] >= 64 << 20 and run["small_mapped"] == 0
        assert run["exported"] is None and run["threshold"] is None
    for name in ("compact", "opted-out", "user"):
        assert runs[name]["bytes"] == reuse["bytes"]


def test_library_callers_keep_their_allocator(monkeypatch):
    """Without own_process() (a program importing upsr, main(argv) in tests) nothing is set."""
    monkeypatch.setattr(malloc, "_OWNED", False)
    monkeypatch.setattr(malloc, "configure", lambda env=None: pytest.fail("applied"))
    assert malloc.for_inference() == "not-owned"


def test_without_glibc_nothing_happens(monkeypatch, run_cli, tmp_path):
    """musl, macOS, Windows: the lookup fails, settings are skipped, enhance works."""
    with monkeypatch.context() as m:
        m.setattr(sys, "platform", "darwin")
        assert malloc.glibc() is None and malloc.mapped_bytes() is None
        assert not malloc.release_free_memory()
    with monkeypatch.context() as m:
        m.setattr(malloc.ctypes, "CDLL", _no_libc)
        assert malloc.glibc() is None
    monkeypatch.setattr(malloc, "glibc", lambda: None)
    env: dict[str, str] = {}
    assert malloc.configure(env) == "unsupported" and env == {}
    statuses = []
    monkeypatch.setattr(malloc, "_OWNED", True)
    real = malloc.for_inference
    monkeypatch.setattr(malloc, "for_inference", lambda: statuses.append(real()))
    x = synth.brickwall(synth.music_like(1.0, 22050, channels=1, seed=2), 22050, 5000)
    sf.write(str(tmp_path / "a.wav"), x.T, 22050, subtype="PCM_16")
    monkeypatch.delenv("UPSR_MALLOC", raising=False)
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    code, _, err = run_cli("enhance", tmp_path / "a.wav", "-o", tmp_path / "o", "-q")
    assert code == 0, err
    assert statuses == ["unsupported"] and not malloc.applied()
    assert (tmp_path / "o" / "a.wav").is_file()


def _no_libc(*_args, **_kwargs):
    raise OSError("no C library")


def test_user_settings_win_and_opt_out():
    assert malloc.user_settings({}) == []
    assert malloc.user_settings({"MALLOC_ARENA_MAX": "2", "HOME": "/"}) == ["MALLOC_ARENA_MAX"]
    assert malloc.user_settings({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) == [
        "GLIBC_TUNABLES"]
    assert malloc.user_settings({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"}) == []
    assert malloc.user_settings({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == ["LD_PRELOAD"]
    assert malloc.configure({"MALLOC_TOP_PAD_": "0"}) == "user-settings"
    assert malloc.configure({"MALLOC_TOP_PAD_": "0", "UPSR_MALLOC": "compact"}) == (
        "user-settings")
    assert malloc.configure({"UPSR_MALLOC": "default"}) == "opted-out"
    assert malloc.mode({}) == malloc.mode({"UPSR_MALLOC": " Reuse "}) == "reuse"
    assert malloc.mode({"UPSR_MALLOC": "default"}) == "default"
    assert malloc.mode({"UPSR_MALLOC": "COMPACT"}) == "compact"
    with pytest.raises(UsageError, match="UPSR_MALLOC='mmap'"):
        malloc.mode({"UPSR_MALLOC": "mmap"})


def test_bad_opt_out_value_is_one_line(monkeypatch, run_cli, tmp_path):
    monkeypatch.setattr(malloc, "_OWNED", True)   # as under the upsr command
    monkeypatch.setenv("UPSR_MALLOC", "off")
    x = np.zeros((1, 2205), dtype=np.float32)
    sf.write(str(tmp_path / "a.wav"), x.T, 22050, subtype="PCM_16")
    code, _, err = run_cli("enhance", tmp_path / "a.wav", "-o", tmp_path / "o")
    assert code == 1
    assert err.strip().splitlines() == [
        "upsr: error: UPSR_MALLOC='off': expected one of reuse, compact, default"]
    assert not (tmp_path / "o" / "a.wav").exists() and not malloc.applied()


def test_free_memory_goes_back_between_files_only_under_upsr_settings(monkeypatch):
    calls = []
    monkeypatch.setattr(malloc, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(malloc, "_APPLIED", None)
    for settings in malloc.MODE_SETTINGS.values():
        for _, _, name, _ in settings:
            monkeypatch.delenv(name, raising=False)
    assert not malloc.between_files() and calls == []      # glibc's defaults: left alone
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")             # the user's own setting
    assert not malloc.between_files() and calls == []
    for mode, settings in malloc.MODE_SETTINGS.items():      # a --jobs worker of upsr's
        with monkeypatch.context() as m:
            for _, _, name, text in settings:
                m.setenv(name, text)
            assert malloc.between_files(), mode
    assert calls == [1] * len(malloc.MODE_SETTINGS)


def test_trim_hands_free_heap_pages_back():
    """The real malloc_trim: a freed 64 MiB heap block leaves the resident set (run in a child
    whose allocator has upsr's settings from the start, as a --jobs worker has)."""
    _glibc_only()
    code = ("import ctypes, os\n"
            "from upsr.infer import malloc\n"
            "libc = ctypes.CDLL(None)\n"
            "libc.malloc.restype = ctypes.c_void_p\n"
            "libc.malloc.argtypes = [ctypes.c_size_t]\n"
            "libc.free.argtypes = [ctypes.c_void_p]\n"
            "def rss():\n"
            "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "base = rss()\n"
            "p = libc.malloc(64 << 20)\n"
            "ctypes.memset(p, 1, 64 << 20)\n"
            "small = libc.malloc(64)\n"   # keeps the block below the heap's top
            "libc.free(p)\n"
            "kept = rss() - base\n"
            "released = malloc.between_files()\n"
            "print(kept >> 20, (rss() - base) >> 20, released, malloc.mapped_bytes())\n")
    env = _clean_env(**{name: text for _, _, name, text in malloc.SETTINGS})
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    kept, after, released, mapped = res.stdout.split()
    assert int(kept) >= 60 and int(after) < 8 and released == "True" and mapped == "0"


def test_collector_paused_then_frozen_only_where_upsr_owns_the_process(monkeypatch):
    import gc

    frozen = gc.get_freeze_count()
    monkeypatch.setattr(malloc, "_OWNED", False)   # a library caller: its collector untouched
    assert not malloc.pause_gc() and gc.isenabled()
    malloc.freeze_gc()
    assert gc.get_freeze_count() == frozen
    monkeypatch.setattr(malloc, "_OWNED", True)
    try:
        assert malloc.pause_gc() and not gc.isenabled()
        kept = [object() for _ in range(10)]
        malloc.freeze_gc()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.fixture
def mallopt_calls(monkeypatch) -> list[tuple[int, int]]:
    """A stand-in C library whose ``mallopt`` records its calls (and accepts them)."""
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(malloc, "glibc", lambda: FakeLibc())
    return calls


def test_row_workers_share_the_main_heap_only_under_upsr_settings(monkeypatch, mallopt_calls):
    calls = mallopt_calls
    monkeypatch.setattr(malloc, "_APPLIED", None)   # glibc's defaults or the user's: left
    assert not malloc.share_arena() and calls == []
    monkeypatch.setattr(malloc, "_APPLIED", "reuse")
    assert malloc.share_arena() and calls == [(malloc.M_ARENA_MAX, 1)]


@pytest.mark.parametrize("chosen", ["reuse", "compact"])
def test_each_mode_sets_and_exports_its_own_settings(monkeypatch, mallopt_calls, chosen):
    calls = mallopt_calls
    monkeypatch.setattr(malloc, "_APPLIED", None)
    env = {"UPSR_MALLOC": chosen}
    assert malloc.configure(env) == "applied" and malloc.applied_mode() == chosen
    expected = {"reuse": [(malloc.M_MMAP_MAX, 0), (malloc.M_TRIM_THRESHOLD, -1)],
                "compact": [(malloc.M_MMAP_THRESHOLD, 64 << 10),
                            (malloc.M_TRIM_THRESHOLD, 128 << 10)]}[chosen]
    assert calls == expected
    exported = {k: v for k, v in env.items() if k != "UPSR_MALLOC"}
    assert exported == {"reuse": {"MALLOC_MMAP_MAX_": "0",
                                  "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)},
                        "compact": {"MALLOC_MMAP_THRESHOLD_": "65536",
                                    "MALLOC_TRIM_THRESHOLD_": "131072"}}[chosen]
    assert malloc.configure({"UPSR_MALLOC": "default"}) == "applied"   # once per process
    assert len(calls) == len(expected)
