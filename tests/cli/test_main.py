import subprocess
import sys

import pytest
import soundfile as sf

from upsr import __version__
from upsr.cli.main import command

BAD_METAVARS = ("{", "<list[", "<str>", "<int>", "<float>", "<path>", "<text>")


def _leaves(cmd, path=()):
    """(words, click command) of every runnable command."""
    subs = getattr(cmd, "commands", None)
    if not subs:
        yield path, cmd
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


LEAVES = sorted(words for words, _ in _leaves(command()))


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0
    assert out.strip() == f"upsr {__version__}"


def test_help_imports_no_torch_and_lists_every_command():
    code = ("import sys; from upsr.cli.main import app; "
            "print('torch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    res = subprocess.run([sys.executable, "-m", "upsr", "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in ("enhance", "degrade", "probe", "eval", "models", "train", "example"):
        assert name in res.stdout, name


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


def test_every_command_has_quiet_and_verbose():
    assert len(LEAVES) >= 9  # enhance degrade probe eval train example + models list/info/import
    for words, cmd in _leaves(command()):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, " ".join(words)


def test_quiet_and_verbose_work_where_the_module_did_not_declare_them(run_cli):
    import logging

    code, out, err = run_cli("models", "list", "-q", "--json")
    assert code == 0 and out.startswith("[") and err == ""
    assert logging.getLogger("upsr").level == logging.ERROR
    code, out, _ = run_cli("models", "info", "sbr", "-vv")
    assert code == 0 and "sbr" in out
    assert logging.getLogger("upsr").level == logging.DEBUG


@pytest.mark.parametrize("words", LEAVES, ids=" ".join)
def test_help_metavars_are_readable(run_cli, words):
    code, out, _ = run_cli(*words, "--help")
    assert code == 0
    for bad in BAD_METAVARS:
        assert bad not in out.lower(), f"{' '.join(words)} --help shows {bad!r}"


def test_usage_lines_name_what_to_give(run_cli):
    assert "Usage: upsr enhance [OPTIONS] PATH..." in run_cli("enhance", "--help")[1]
    assert "Usage: upsr probe [OPTIONS] PATH..." in run_cli("probe", "--help")[1]
    assert "Usage: upsr degrade [OPTIONS] SRC_DIR OUT_DIR" in run_cli("degrade", "--help")[1]
    out = run_cli("enhance", "--help")[1]
    for shown in ("--sr HZ", "--cutoff HZ", "--report FILE", "-o, --out DIR", "--batch-size N"):
        assert shown in out, shown


@pytest.mark.parametrize("args", [
    ("probe", "{missing}"),
    ("enhance", "{missing}", "-o", "{tmp}/out"),
    ("eval", "{missing}", "{tmp}"),
    ("eval", "{tmp}", "{missing}"),
    ("degrade", "{missing}", "{tmp}/pairs", "--resample", "16000"),
    ("train", "{missing}"),
], ids=lambda a: a[0])
def test_a_missing_input_is_a_setup_error_in_every_command(run_cli, tmp_path, args):
    missing = tmp_path / "no-such.wav"
    code, _, err = run_cli(*(a.format(missing=missing, tmp=tmp_path) for a in args))
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("upsr: error: ")
    if args[0] == "train":  # the recipe loader's own wording
        assert err == f"upsr: error: {missing}: no such recipe file\n"
    else:
        assert err == f"upsr: error: {missing}: no such file or folder\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "pairs").exists()


def test_an_unforeseen_os_error_is_one_line(run_cli, tmp_path, monkeypatch):
    from upsr.cli import probe

    def boom(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(probe, "_probe_stdin", boom)
    code, _, err = run_cli("probe", "-")
    assert code == 1
    assert err == f"upsr: error: {tmp_path / 'x'}: Permission denied\n"


@pytest.fixture
def audio_dir(tmp_path):
    import numpy as np

    d = tmp_path / "in"
    d.mkdir()
    x = 0.1 * np.random.default_rng(0).standard_normal((4410, 1))
    sf.write(str(d / "a.wav"), x, 44100, subtype="FLOAT")
    return d


@pytest.mark.parametrize("args,shown", [
    (("enhance", "{src}", "-o", "{tmp}/out", "--report", "{blocker}/r.json"),
     "--report {blocker}/r.json: {blocker} is a file, not a folder"),
    (("enhance", "{src}", "-o", "{tmp}/out", "--report", "{src}"),
     "--report {src} is a folder, not a file"),
    (("eval", "{src}", "{src}", "--json", "{blocker}/s.json"),
     "--json {blocker}/s.json: {blocker} is a file, not a folder"),
    (("eval", "{src}", "{src}", "--csv", "{blocker}/s.csv"),
     "--csv {blocker}/s.csv: {blocker} is a file, not a folder"),
    (("degrade", "{src}", "{blocker}/pairs", "--resample", "16000"),
     "OUT_DIR {blocker}/pairs: {blocker} is a file, not a folder"),
    (("train", "{recipe}", "--out", "{blocker}/run"),
     "--out {blocker}/run: {blocker} is a file, not a folder"),
], ids=lambda a: a[0] if isinstance(a, tuple) else "")
def test_output_places_are_checked_before_any_work(run_cli, tmp_path, audio_dir, args, shown):
    from pathlib import Path

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "aeromamba.toml"
    fill = {"src": audio_dir, "tmp": tmp_path, "blocker": blocker, "recipe": recipe}
    code, out, err = run_cli(*(a.format(**fill) for a in args))
    assert code == 1
    assert err == f"upsr: error: {shown.format(**fill)}\n"  # one line, no traceback
    assert out == ""
    assert not (tmp_path / "out").exists()  # nothing was restored before the check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "in"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_an_unwritable_report_folder_stops_before_the_batch(run_cli, tmp_path, audio_dir):
    # /proc refuses new files even to root, whom permission bits do not stop
    code, _, err = run_cli("enhance", audio_dir, "-o", tmp_path / "out", "--report",
                           "/proc/upsr-report.json")
    assert code == 1
    assert err.startswith("upsr: error: --report /proc/upsr-report.json: cannot write in /proc")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()
