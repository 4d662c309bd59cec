import subprocess
import sys
import time

import soundfile as sf

from upsr import __version__


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"upsr {__version__}"


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t=time.perf_counter(); from upsr.cli.main import app; "
            "print('torch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "upsr", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0 and "enhance" in res.stdout or "example" in res.stdout
    assert elapsed < 3.0  # generous bound for a loaded CI box; measured ~0.3 s here


def test_unknown_command_is_one_line_usage_error(run_cli):
    code, _, err = run_cli("frobnicate")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("upsr: error:")


def test_example_writes_band_limited_audio(run_cli, tmp_path):
    code, out, _ = run_cli("example", tmp_path / "demo")
    assert code == 0
    files = sorted((tmp_path / "demo").rglob("*.*"))
    assert len(files) == 3 and len(out.splitlines()) == 3
    info = sf.info(str(tmp_path / "demo" / "music_8k.flac"))
    assert info.channels == 2 and info.subtype == "PCM_24"
    # refuses to overwrite
    code, _, err = run_cli("example", tmp_path / "demo")
    assert code == 1 and "exists" in err
