"""``upsr models pull`` and auto-pull against a loopback server with the Hugging Face layout.

The server (127.0.0.1, a daemon thread that shuts itself down after a minute) answers what
``huggingface_hub`` sends: ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{file}`` with
``X-Repo-Commit``, ``ETag`` (the file's SHA-256, as the Hub sends for LFS files) and
``Content-Length``, and ``Range: bytes=N-`` answered with 206. Nothing touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from upsr import checkpoint
from upsr.models.apollo import Apollo, ApolloConfig
from upsr.nn.roformer import rope_tables

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SERVER_LIFETIME_S = 60.0


def official_apollo_state(config: ApolloConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """The generator state the official code saves: our keys plus the RoPE buffers."""
    torch.manual_seed(seed)
    model = Apollo(config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cos, sin = rope_tables(100, config.feature_dim // 8)
    for i in range(config.layer):
        state[f"net.{i}.band_net.cos_freq"] = cos.clone()
        state[f"net.{i}.band_net.sin_freq"] = sin.clone()
    return state


def apollo_container(config: ApolloConfig = ApolloConfig(feature_dim=16, layer=1),
                     seed: int = 0) -> bytes:
    """A released-format ``pytorch_model.bin`` (``{model_name, state_dict, model_args,
    infos}``, model_args holding only the channel count) with random weights."""
    buf = io.BytesIO()
    torch.save({"model_name": "Apollo", "state_dict": official_apollo_state(config, seed),
                "model_args": {"n_sample_rate": 2}, "infos": {"software_versions": {}}}, buf)
    return buf.getvalue()


class FakeHub:
    """Files served as ``/{repo}/resolve/{rev}/{file}``; every request is logged.

    ``cut_first_get``: the first full GET sends the headers and only half the body, then
    closes the connection (an interrupted download). ``etag``: a forced ETag (default: the
    SHA-256 of the served bytes)."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.cut_first_get = False
        self.etag: str | None = None
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _lookup(self) -> bytes | None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve" or parts[3] not in ("main", COMMIT):
                    return None
                return hub.files.get(("/".join(parts[:2]), "/".join(parts[4:])))

            def _head(self, data: bytes | None, status: int = 200, start: int = 0) -> None:
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub.etag or hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()

            def do_HEAD(self) -> None:
                hub.log.append(("HEAD", self.path, None))
                self._head(self._lookup())

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                hub.log.append(("GET", self.path, rng))
                data = self._lookup()
                start = 0
                if data is not None and rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                self._head(data, 206 if start else 200, start)
                if data is None:
                    return
                body = data[start:]
                if hub.cut_first_get and not start:
                    hub.cut_first_get = False
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(SERVER_LIFETIME_S, self.server.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> FakeHub:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [e for e in self.log if e[0] == "GET"]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running loopback hub; HF_ENDPOINT points at it, HF_HOME and the model dir in tmp."""
    for var in ("UPSR_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("UPSR_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files[("JusperLee/Apollo", "pytorch_model.bin")] = apollo_container()
        yield hub


@pytest.fixture
def known_digest(monkeypatch, fake_hub):
    """Make the table's known Apollo digest the served file's (an unchanged upstream)."""
    from upsr.models import hub

    digest = hashlib.sha256(fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")]).hexdigest()
    src = hub.SOURCES["apollo"]
    monkeypatch.setitem(hub.SOURCES, "apollo", type(src)(**{**src.__dict__, "sha256": digest}))
    return digest


def _lowpassed(path: Path, seconds: float = 0.3, sr: int = 44100) -> np.ndarray:
    from upsr.audio import synth

    x = synth.brickwall(synth.music_like(seconds, sr, channels=1, seed=3), sr, 6000)
    sf.write(str(path), x.T, sr, subtype="FLOAT")
    return x


def _model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_pull_installs_with_metadata_then_enhance_restores(run_cli, fake_hub, known_digest,
                                                           tmp_path):
    code, out, err = run_cli("models", "pull", "apollo")
    assert code == 0, err
    dest = _model_dir(tmp_path) / "apollo.safetensors"
    assert out.strip() == str(dest)
    assert "warning" not in err.lower() and "SHA-256" not in err
    meta = checkpoint.read_metadata(dest)
    source = json.loads(meta["source"])
    assert source["repo"] == "JusperLee/Apollo" and source["file"] == "pytorch_model.bin"
    assert source["revision"] == COMMIT and source["requested"] == "main"
    assert source["sha256"] == known_digest
    assert source["licence"] == "CC BY-SA 4.0" and source["date"].endswith("Z")
    # the original pickle is gone from upsr's folder; no temporary files are left
    assert sorted(p.name for p in _model_dir(tmp_path).iterdir()) == ["apollo.safetensors"]
    # the weights are the served ones
    loaded = checkpoint.load(dest, expect="apollo")
    ref = official_apollo_state(ApolloConfig(feature_dim=16, layer=1))
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())

    x = _lowpassed(tmp_path / "in.wav")
    code, _, err = run_cli("enhance", tmp_path / "in.wav", "--model", "apollo", "-o",
                           tmp_path / "out", "--no-lf-replace", "--precision", "fp32")
    assert code == 0, err
    y, sr = sf.read(str(tmp_path / "out" / "in.wav"), dtype="float32", always_2d=True)
    assert sr == 44100 and y.shape[0] == x.shape[1]
    with torch.no_grad():
        want = loaded.restore(torch.from_numpy(x.astype(np.float32)))
    assert np.allclose(y[:, 0], want.numpy()[0], atol=1e-4)
    # a second pull finds the installed file up to date: no second download
    gets = len(fake_hub.gets())
    code, _, err = run_cli("models", "pull", "apollo")
    assert code == 0 and "up to date" in err
    assert len(fake_hub.gets()) == gets


def test_interrupted_download_resumes_with_a_range_request(run_cli, fake_hub, known_digest,
                                                           tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub writes in DOWNLOAD_CHUNK_SIZE pieces (10 MB) and resumes after the last
    # whole piece; the real file is 66 MB, the test file 0.4 MB, so the pieces shrink here
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    fake_hub.cut_first_get = True
    code, _, err = run_cli("models", "pull", "apollo", "--keep-original")
    assert code == 0, err
    ranges = [rng for _, _, rng in fake_hub.gets() if rng]
    size = len(fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")])
    assert ranges == [f"bytes={(size // 2) >> 16 << 16}-"] and size // 2 >= 1 << 16
    meta = json.loads(checkpoint.read_metadata(_model_dir(tmp_path) / "apollo.safetensors"
                                               )["source"])
    assert meta["sha256"] == known_digest
    kept = _model_dir(tmp_path) / "originals" / "apollo" / "pytorch_model.bin"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == known_digest


def test_digest_mismatch_is_one_warning_line_and_still_installs(run_cli, fake_hub, tmp_path):
    from upsr.models import hub

    code, _, err = run_cli("models", "pull", "apollo", "--revision", COMMIT)
    assert code == 0, err
    served = hashlib.sha256(fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")]).hexdigest()
    lines = [ln for ln in err.splitlines() if hub.SOURCES["apollo"].sha256 in ln]
    assert len(lines) == 1 and served in lines[0] and COMMIT in lines[0]
    assert (_model_dir(tmp_path) / "apollo.safetensors").is_file()


@pytest.mark.parametrize("damage", ["truncated", "bytes-changed-in-transfer", "not-apollo"])
def test_corrupt_download_is_an_error_and_installs_nothing(run_cli, fake_hub, tmp_path, damage):
    good = fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")]
    if damage == "truncated":
        fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")] = good[:len(good) * 3 // 5]
    elif damage == "bytes-changed-in-transfer":
        fake_hub.etag = hashlib.sha256(good).hexdigest()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")] = bytes(bad)
    else:
        buf = io.BytesIO()
        torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, buf)
        fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")] = buf.getvalue()
    code, out, err = run_cli("models", "pull", "apollo")
    assert code == 1 and out == ""
    errors = [ln for ln in err.splitlines() if ln.startswith("upsr: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    d = _model_dir(tmp_path)
    assert not d.exists() or [p.name for p in d.iterdir()] == []


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "UPSR_OFFLINE", "--offline"])
def test_offline_is_a_one_line_error_naming_command_and_file(run_cli, fake_hub, tmp_path,
                                                             monkeypatch, how):
    _lowpassed(tmp_path / "in.wav")
    args = ["enhance", tmp_path / "in.wav", "--model", "apollo", "-o", tmp_path / "out"]
    if how == "--offline":
        args.append("--offline")
    else:
        monkeypatch.setenv(how, "1")
    code, _, err = run_cli(*args)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("upsr: error:")
    assert "upsr models pull apollo" in err and "apollo.safetensors" in err
    assert str(_model_dir(tmp_path)) in err
    if how != "--offline":
        code, _, err = run_cli("models", "pull", "apollo")
        assert code == 1 and len(err.strip().splitlines()) == 1 and how in err
    assert fake_hub.log == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, page", [
    ("aeromamba", "https://poliufrjbr-my.sharepoint.com/"),
    ("wave-u-mamba", "https://drive.google.com/file/d/1ljUMQHWil5w8moupWkapqkUOcGNN4x3e"),
])
def test_browser_only_source_prints_page_and_import_command(run_cli, fake_hub, tmp_path, name,
                                                           page):
    code, out, err = run_cli("models", "pull", name)
    assert code == 1 and out == ""
    assert err.startswith("upsr: error:")
    assert any(ln.strip().startswith(page) for ln in err.splitlines())
    target = _model_dir(tmp_path) / f"{name}.safetensors"
    assert f"upsr models import {name} DOWNLOADED_FILE {target}" in err
    assert fake_hub.log == []


def test_enhance_pulls_a_missing_model_with_one_notice(run_cli, fake_hub, tmp_path):
    _lowpassed(tmp_path / "in.wav")
    code, out, err = run_cli("enhance", tmp_path / "in.wav", "--model", "apollo", "-o",
                             tmp_path / "out", "--dry-run")
    assert code == 0 and "the run downloads it from hf:JusperLee/Apollo" in err, err
    assert fake_hub.log == [] and not _model_dir(tmp_path).exists()
    code, _, err = run_cli("enhance", tmp_path / "in.wav", "--model", "apollo", "-o",
                           tmp_path / "out")
    assert code == 0, err
    notices = [ln for ln in err.splitlines() if "not installed: downloading" in ln]
    assert len(notices) == 1 and "JusperLee/Apollo" in notices[0]
    assert (_model_dir(tmp_path) / "apollo.safetensors").is_file()
    assert (tmp_path / "out" / "in.wav").is_file()


def test_load_model_pulls_and_pull_false_refuses(fake_hub, tmp_path, capsys):
    import upsr
    from upsr.errors import UsageError

    with pytest.raises(UsageError, match="upsr models pull apollo"):
        upsr.load_model("apollo", pull=False)
    assert fake_hub.log == []
    model = upsr.load_model("apollo")
    assert isinstance(model, Apollo) and model.config.feature_dim == 16
    assert "downloading it from hf:JusperLee/Apollo" in capsys.readouterr().err
    # installed now: no network needed any more
    assert isinstance(upsr.load_model("apollo", pull=False), Apollo)


def official_audiosr_container(seed: int = 0) -> bytes:
    """An official-format AudioSR ``pytorch_model.bin`` with the small test networks: U-Net,
    first-stage VAE + vocoder, the condition's VAE copy, EMA shadows, the cosine schedule and
    ``scale_factor`` (what ``LatentDiffusion.state_dict()`` holds, CLAP left out)."""
    from upsr.models.audiosr.unet import UNet, UNetConfig
    from upsr.models.audiosr.vae import AutoencoderKL, VAEConfig
    from upsr.models.audiosr.vocoder import Vocoder, VocoderConfig
    from upsr.nn.diffusion import Schedule

    torch.manual_seed(seed)
    unet = UNet(UNetConfig.small()).state_dict()
    vae = AutoencoderKL(VAEConfig.small()).state_dict()
    voc = Vocoder(VocoderConfig.small()).state_dict()
    sd = {"model.diffusion_model." + k: v for k, v in unet.items()}
    for prefix in ("first_stage_model.", "cond_stage_models.0.vae."):
        sd.update({prefix + k: v.clone() for k, v in vae.items()})
        sd.update({prefix + "vocoder." + k: v.clone() for k, v in voc.items()})
    sd.update({"model_ema." + ("diffusion_model." + k).replace(".", ""): v.clone()
               for k, v in unet.items()})
    sd["alphas_cumprod"] = torch.as_tensor(Schedule.cosine(1000, s=0.008).alphas_cumprod,
                                           dtype=torch.float32)
    sd["scale_factor"] = torch.tensor(0.5)
    buf = io.BytesIO()
    torch.save({"state_dict": sd}, buf)
    return buf.getvalue()


def test_pull_audiosr_speech_installs_a_loadable_model(run_cli, fake_hub):
    import upsr
    from upsr.models.audiosr.model import AudioSR

    fake_hub.files[("haoheliu/audiosr_speech", "pytorch_model.bin")] = (
        official_audiosr_container())
    code, _, err = run_cli("models", "pull", "audiosr-speech")
    assert code == 0, err
    installed = Path(fake_hub_model_dir()) / "audiosr-speech.safetensors"
    meta = checkpoint.read_metadata(installed)
    assert meta["model"] == "audiosr" and "haoheliu/audiosr_speech" in meta["source"]
    model = upsr.load_model("audiosr-speech", pull=False)
    assert isinstance(model, AudioSR)
    assert float(model.config.scale_factor) == 0.5


def fake_hub_model_dir() -> str:
    import os

    return os.environ["UPSR_MODEL_DIR"]


def test_unknown_name_and_missing_file_upstream(run_cli, fake_hub):
    code, _, err = run_cli("models", "pull", "nosuch")
    assert code == 1 and "no published weights known for 'nosuch'" in err
    del fake_hub.files[("JusperLee/Apollo", "pytorch_model.bin")]
    code, _, err = run_cli("models", "pull", "apollo")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "pytorch_model.bin not found in JusperLee/Apollo" in err


def test_unwritable_model_folder_fails_before_any_download(run_cli, fake_hub, tmp_path,
                                                           monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("UPSR_MODEL_DIR", str(tmp_path / "a-file" / "models"))
    code, _, err = run_cli("models", "pull", "apollo")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "is not writable" in err and "UPSR_MODEL_DIR" in err
    assert fake_hub.log == []


def test_pull_never_replaces_weights_it_did_not_pull(run_cli, fake_hub, tmp_path):
    torch.manual_seed(0)
    mine = checkpoint.save(_model_dir(tmp_path) / "apollo.safetensors",
                           Apollo(ApolloConfig(feature_dim=16, layer=1)), recipe="steps = 5")
    before = mine.read_bytes()
    code, _, err = run_cli("models", "pull", "apollo")
    assert code == 1 and "was not pulled from JusperLee/Apollo" in err and "--force" in err
    assert mine.read_bytes() == before
    code, _, err = run_cli("models", "pull", "apollo", "--force")
    assert code == 0, err
    assert json.loads(checkpoint.read_metadata(mine)["source"])["repo"] == "JusperLee/Apollo"
