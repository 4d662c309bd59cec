"""The comparison page (``eval --html``), ``eval --plot``, ``probe --plot`` and ``enhance
--report r.html``: the page parses, every link resolves, images decode at their size, players
point at playable WAVs, the numbers on the page are the ``--json`` numbers, and nothing refers
to the network."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from upsr.audio.synth import brickwall, music_like
from upsr.eval import plots

SR = 16000


class _Page(HTMLParser):
    """Collects tags with their attributes, and every metric cell."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: list[dict[str, str]] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "td" and "data-metric" in a:
            self.cells.append(a)
        if tag not in ("img", "meta", "br", "input"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()


def _parse(path: Path) -> _Page:
    page = _Page()
    text = path.read_text(encoding="utf-8")
    page.feed(text)
    page.close()
    assert page.stack == [], page.stack  # every element closed
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    return page


def _check_links(page: _Page, html_path: Path) -> dict[str, list[Path]]:
    """Every src/href is relative, stays beside the page and exists; returns them by tag."""
    found: dict[str, list[Path]] = {}
    for tag, a in page.tags:
        for attr in ("src", "href"):
            ref = a.get(attr)
            if not ref or ref.startswith("#"):
                continue
            assert "://" not in ref and not ref.startswith("/"), ref
            target = (html_path.parent / ref).resolve()
            assert target.is_file(), ref
            assert html_path.parent.resolve() in target.parents
            found.setdefault(tag, []).append(target)
    return found


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """ref/{music,speech}/, lr/ (4 kHz cut), two systems: 'copy' (the input) and 'noisy'
    (the reference plus noise); one 3-s file longer than the excerpt."""
    root = tmp_path_factory.mktemp("cmp")
    for d in ("ref", "lr", "copy", "noisy"):
        for c in ("music", "speech"):
            (root / d / c).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, key in enumerate(("music/a", "music/b", "speech/c")):
        x = music_like(3.0 if i == 0 else 1.0, SR, channels=1, seed=i)
        lr = brickwall(x, SR, 4000)
        sf.write(root / "ref" / f"{key}.wav", x.T, SR, subtype="FLOAT")
        sf.write(root / "lr" / f"{key}.wav", lr.T, SR, subtype="FLOAT")
        sf.write(root / "copy" / f"{key}.flac", lr.T, SR, subtype="PCM_24")
        noisy = x + 0.02 * rng.standard_normal(x.shape).astype(np.float32)
        sf.write(root / "noisy" / f"{key}.wav", noisy.T, SR, subtype="FLOAT")
    return root


def test_eval_html_page_is_complete_offline_and_matches_json(run_cli, trees, tmp_path):
    out = tmp_path / "report.html"
    code, _, err = run_cli("eval", trees / "ref", trees / "copy", trees / "noisy",
                           "--name", "input", "--name", "noisy=sbr", "--lr-dir", trees / "lr",
                           "--html", out, "--json", tmp_path / "r.json", "--excerpt-s", "2")
    assert code == 0, err
    page = _parse(out)
    links = _check_links(page, out)
    assert all(p.parent.parent == tmp_path / "report_files" for p in links["img"])
    # 3 files × (full view + thumbnail + LSD curve); each decodes at its drawn size
    assert len(links["img"]) == 9
    for p in links["img"]:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] in (900, 240)
    lazy = [a for t, a in page.tags if t == "img"]
    assert all(a.get("loading") == "lazy" for a in lazy)
    # players: 3 files × (degraded input, 2 systems, reference), playable WAVs, excerpts ≤ 2 s
    audio = links["audio"]
    assert len(audio) == 12
    for p in audio:
        info = sf.info(p)
        assert info.format == "WAV" and info.samplerate == SR and info.duration <= 2.0 + 1e-9
    assert sf.info(audio[0]).duration == pytest.approx(2.0)  # the 3-s file is cut
    # every metric on the page is the --json number
    doc = json.loads((tmp_path / "r.json").read_text())
    by_system = {s["name"]: s for s in doc["systems"]}
    assert set(by_system) == {"input", "noisy"} and by_system["noisy"]["model"] == "sbr"
    per_file = [c for c in page.cells if "data-file" in c]
    assert len(per_file) >= 3 * 2 * 6
    for c in per_file:
        row = next(r for r in by_system[c["data-system"]]["files"] if r["file"] == c["data-file"])
        assert float(c["data-value"]) == row[c["data-metric"]]
    summary = [c for c in page.cells if c.get("data-condition") == "all"]
    for c in summary:
        assert float(c["data-value"]) == pytest.approx(
            by_system[c["data-system"]]["summary"][c["data-metric"]]["mean"], rel=1e-12)
    # per condition: the mean over that sub-folder's files
    speech = [c for c in page.cells if c.get("data-condition") == "speech"
              and c["data-metric"] == "lsd" and c["data-system"] == "noisy"]
    assert float(speech[0]["data-value"]) == next(
        r["lsd"] for r in by_system["noisy"]["files"] if r["file"] == "speech/c")
    # best marked: the noisy reference beats the band-limited input on LSD, the input wins
    # LSD-LF (it is exact below the cutoff)
    text = out.read_text()
    best = [c for c in page.cells if "best" in c.get("class", "")
            and c.get("data-condition") == "all"]
    assert {(c["data-system"], c["data-metric"]) for c in best} >= {("noisy", "lsd"),
                                                                   ("input", "lsd_lf")}
    assert "upsr version" in text and "sha256" not in text.split("Systems")[0]
    assert "none (DSP, no weights)" in text  # sbr has no checkpoint to digest


def test_eval_plot_pngs_have_size_and_axes(run_cli, trees, tmp_path):
    code, _, err = run_cli("eval", trees / "ref", trees / "copy", "--lr-dir", trees / "lr",
                           "--plot", tmp_path / "png", "-q")
    assert code == 0, err
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == ["music__a.png", "music__b.png", "speech__c.png"]
    with Image.open(pngs[0]) as im:
        assert im.size == (900, 3 * 180 + 50)  # input, system, reference panels


def test_spectrogram_panels_share_scale_and_range(tmp_path):
    low = brickwall(music_like(1.0, 22050, channels=1, seed=1), 22050, 3000)
    full = 0.1 * music_like(1.0, 44100, channels=2, seed=2)
    p = plots.spectrogram_panels(tmp_path / "s.png", [("low", low, 22050), ("full", full, 44100)],
                                 cutoff_hz=3000.0, width_px=640, panel_px=100)
    assert p.freq_range_hz == (0.0, 22050.0)  # the highest Nyquist frequency of all panels
    top = max(float(plots.spectrogram_db(x, sr).db.max()) for x, sr in
              ((low, 22050), (full, 44100)))
    assert p.colour_range_db == pytest.approx((top - plots.RANGE_DB, top))
    with Image.open(p.path) as im:
        assert im.size == (640, 250) == p.size_px


def test_spectrogram_is_the_projects_stft_in_db():
    """A 1 kHz sine of amplitude a: its bin holds (a·n_fft/4)² (periodic Hann), in dB."""
    sr, n_fft = 16000, 512
    t = np.arange(sr) / sr
    s = plots.spectrogram_db(0.5 * np.sin(2 * np.pi * 1000 * t), sr, n_fft, 128)
    assert s.db.shape == (n_fft // 2 + 1, 1 + sr // 128)
    k = 1000 * n_fft // sr
    mid = s.db[:, 20:-20]
    assert np.all(mid.argmax(axis=0) == k)
    np.testing.assert_allclose(mid[k], 10 * np.log10((0.5 * n_fft / 4) ** 2), atol=0.01)


def test_lsd_per_band_agrees_with_the_metric():
    from upsr.eval.metrics import lsd

    rng = np.random.default_rng(3)
    ref, est = rng.standard_normal((2, 1, 8000))
    centres, one = plots.lsd_per_band(ref, est, 16000, band_hz=9000)  # one band: all bins
    assert one.shape == (1,) and one[0] == pytest.approx(lsd(ref, est), rel=1e-12)
    centres, vals = plots.lsd_per_band(ref, brickwall(ref, 16000, 4000), 16000)
    assert centres[0] == pytest.approx(127 / 2 * 16000 / 2048)  # bins 0..127: 0-1 kHz
    assert vals[:3].max() < 0.05 and vals[-3:].min() > 1.0  # kept below 4 kHz, lost above


def test_probe_plot_annotates_band_edge(run_cli, tmp_path):
    x = brickwall(music_like(1.0, 44100, channels=1, seed=4), 44100, 11000)
    sf.write(tmp_path / "a.wav", x.T, 44100, subtype="PCM_16")
    code, out, err = run_cli("probe", tmp_path / "a.wav", "--plot", tmp_path / "a.png", "-q")
    assert code == 0, err
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (900, 360)
    code, _, err = run_cli("probe", tmp_path, tmp_path / "a.wav", "--plot", tmp_path / "b.png")
    assert code == 1 and "need a folder" in err


def test_enhance_html_report(run_cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    x = brickwall(music_like(1.0, 22050, channels=1, seed=5), 22050, 4000)
    sf.write(src / "a.wav", x.T, 22050, subtype="PCM_16")
    out = tmp_path / "r.html"
    code, _, err = run_cli("enhance", src, "-o", tmp_path / "out", "--report", out, "-q")
    assert code == 0, err
    page = _parse(out)
    links = _check_links(page, out)
    assert len(links["img"]) == 1 and len(links["audio"]) == 2
    before, after = (sf.info(p) for p in links["audio"])
    assert before.samplerate == 22050 and after.duration == pytest.approx(1.0, abs=0.01)
    text = out.read_text()
    assert ">done<" in text and "cutoff_hz" in text


def test_help_does_not_import_matplotlib():
    code = ("import sys; from upsr.cli.main import app; "
            "print('matplotlib' in sys.modules, 'upsr.eval.plots' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]


def test_model_info_digests_the_checkpoint(tmp_path):
    import hashlib

    from upsr import checkpoint, models
    from upsr.eval.html import model_info

    path = checkpoint.save(tmp_path / "m.safetensors",
                           models.build("aeromamba", channels=4, dconv_depth=1))
    info = model_info(str(path))
    assert info["checkpoint"] == str(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_info("sbr")["checkpoint"] == "none (DSP, no weights)"
    assert model_info(None) == {}
