"""``upsr models list | info | import``: what is installed and usable, name resolution,
variant metadata, configurations inferred from tensor shapes."""

from __future__ import annotations

import io
import json

import pytest
import torch

from tests.models.test_hub import official_apollo_state
from upsr import checkpoint, models
from upsr.models.apollo import Apollo, ApolloConfig


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    # a long folder name: a table cut to the terminal width would lose the end of the path
    d = tmp_path / ("a-long-folder-name-" * 6) / "models"
    d.mkdir(parents=True)
    monkeypatch.setenv("UPSR_MODEL_DIR", str(d))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("UPSR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return d


def _container(path, config: ApolloConfig, *, lightning: bool = False, seed: int = 0,
               model_args: dict | None = None) -> dict[str, torch.Tensor]:
    """Write an official Apollo container (or a Lightning ``.ckpt`` with ``audio_model.`` keys
    and a discriminator) without any configuration; return the generator state."""
    state = official_apollo_state(config, seed)
    if lightning:
        saved = {f"audio_model.{k}": v for k, v in state.items()}
        saved["discriminator.conv.weight"] = torch.zeros(4, 1, 3)
        torch.save({"state_dict": saved, "epoch": 7, "global_step": 1000}, path)
    else:
        torch.save({"model_name": "Apollo", "state_dict": state,
                    "model_args": model_args or {"n_sample_rate": 2}}, path)
    return state


def test_list_shows_every_system_and_installed_files_untruncated(run_cli, model_dir):
    torch.manual_seed(0)
    path = checkpoint.save(model_dir / "apollo.safetensors", Apollo(ApolloConfig(
        feature_dim=16, layer=1)), variant={"bitrate_kbps": 128})
    (model_dir / "broken.safetensors").write_bytes(b"not a checkpoint")
    code, out, err = run_cli("models", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["NAME", "SYSTEM", "STATUS", "SIZE", "PULL"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert set(models.names()) | {"audiosr-basic", "audiosr-speech", "broken"} <= set(rows)
    assert str(path) in rows["apollo"] and "installed" in rows["apollo"]
    assert "bitrate_kbps=128" in rows["apollo"] and "CC BY-SA 4.0" in rows["apollo"]
    assert "built in" in rows["sbr"]
    assert "browser" in rows["aeromamba"] and "sharepoint.com" in rows["aeromamba"]
    assert "unusable" in rows["broken"] and str(model_dir / "broken.safetensors") in out
    code, out, _ = run_cli("models", "list", "--json")
    by_name = {r["name"]: r for r in json.loads(out)}
    assert by_name["apollo"]["size_bytes"] == path.stat().st_size
    assert by_name["apollo"]["pull"] == "yes" and by_name["wave-u-mamba"]["pull"] == "browser"
    assert by_name["wave-u-mamba"]["status"] == "not installed"


def test_folders_named_like_systems_do_not_shadow_them(run_cli, model_dir, tmp_path,
                                                      monkeypatch):
    work = tmp_path / "work"
    for name in ("sbr", "apollo"):
        (work / name).mkdir(parents=True)
    monkeypatch.chdir(work)
    assert models.find_checkpoint("sbr") is None
    assert models.load_model("sbr").name == "sbr"
    code, out, err = run_cli("models", "info", "sbr")
    assert code == 0 and "weights: none needed" in out, err
    code, out, err = run_cli("models", "info", "apollo")
    assert code == 0 and "upsr models pull apollo" in out, err
    # a path still means a file: with a separator or the .safetensors suffix
    code, _, err = run_cli("models", "info", "./sbr")
    assert code == 1 and "./sbr: no such checkpoint file" in err
    code, _, err = run_cli("models", "info", "missing.safetensors")
    assert code == 1 and "no such checkpoint file" in err


def test_import_writes_variant_metadata_that_bitrate_auto_picks(run_cli, model_dir, tmp_path):
    from upsr.infer.batch import Item, pick_variant

    config = ApolloConfig(feature_dim=16, layer=1)
    for kbps, seed in ((64, 1), (128, 2)):
        _container(tmp_path / f"a{kbps}.bin", config, seed=seed)
        code, out, err = run_cli("models", "import", "apollo", tmp_path / f"a{kbps}.bin",
                                 model_dir / f"apollo-{kbps}k.safetensors",
                                 "--variant", f"bitrate_kbps={kbps}")
        assert code == 0, err
        meta = checkpoint.read_metadata(out.strip())
        assert json.loads(meta["variant"]) == {"bitrate_kbps": float(kbps)}
        assert json.loads(meta["source"])["file"] == f"a{kbps}.bin"
    family = models.build("apollo", feature_dim=16, layer=1)
    # |log2(96/128)| = 0.415 < |log2(96/64)| = 0.585; 80 kbps is nearer 64
    assert pick_variant(family, "apollo", Item("x", "y", bitrate_kbps=96)).endswith("128k"
                                                                                   ".safetensors")
    assert pick_variant(family, "apollo", Item("x", "y", bitrate_kbps=80)).endswith("64k"
                                                                                   ".safetensors")
    code, _, err = run_cli("models", "import", "apollo", tmp_path / "a64.bin",
                           tmp_path / "x.safetensors", "--variant", "speed=3")
    assert code == 1 and "unknown variant key 'speed'" in err and not (
        tmp_path / "x.safetensors").exists()
    code, _, err = run_cli("models", "import", "apollo", tmp_path / "a64.bin",
                           tmp_path / "x.safetensors", "--variant", "bitrate_kbps")
    assert code == 1 and "KEY=NUMBER" in err


@pytest.mark.parametrize("config, lightning, printed", [
    (ApolloConfig(sr=48000, win=20, feature_dim=32, layer=2), True,
     "sr=48000 win=20 feature_dim=32 layer=2 (inferred from tensor shapes)"),
    (ApolloConfig(sr=44100, win=40, feature_dim=16, layer=3), False,
     "sr=44100 win=40 feature_dim=16 layer=3 (inferred from tensor shapes)"),
])
def test_community_apollo_configs_are_inferred_printed_and_run(run_cli, tmp_path, config,
                                                               lightning, printed):
    src = tmp_path / ("last.ckpt" if lightning else "pytorch_model.bin")
    state = _container(src, config, lightning=lightning, seed=5)
    out = tmp_path / "community.safetensors"
    code, stdout, err = run_cli("models", "import", "apollo", src, out)
    assert code == 0, err
    assert printed in err and stdout.strip() == str(out)
    loaded = models.load_model(str(out))
    assert loaded.config == config
    # the same weights in a model built from the true configuration give the same output
    direct = Apollo(config).eval()
    direct.load_state_dict({k: v for k, v in state.items() if "_freq" not in k})
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded.restore(x), direct.restore(x))


def test_apollo_model_args_win_over_inference_and_bad_splits_are_named(tmp_path):
    from upsr.errors import CheckpointError
    from upsr.models.apollo import convert_official

    config = ApolloConfig(sr=22050, win=40, feature_dim=16, layer=1)  # 882 samples, as 44.1k/20
    state = official_apollo_state(config)
    overrides, _ = convert_official({"state_dict": state, "model_args": {"sr": 22050}})
    assert overrides == {"sr": 22050, "win": 40, "feature_dim": 16, "layer": 1}
    assert overrides.inferred == ("win", "feature_dim", "layer") and not overrides.notes
    overrides, _ = convert_official({"state_dict": state})  # ambiguous: 44.1 kHz assumed
    assert (overrides["sr"], overrides["win"]) == (44100, 20)
    assert overrides.notes == ("sr=44100 assumed: the weights fix only the window "
                               "(882 samples)",)
    bad = dict(state)
    bad["BN.79.0.weight"] = torch.ones(4)
    with pytest.raises(CheckpointError, match=r"BN\.79\.0\.weight"):
        convert_official({"state_dict": bad})


def test_aeromamba_widths_are_inferred_from_shapes_and_printed(run_cli, tmp_path):
    torch.manual_seed(0)
    model = models.build("aeromamba", channels=8, growth=1, dconv_depth=1, dconv_comp=2,
                         official_forward=True).eval()
    buf = tmp_path / "checkpoint.th"
    torch.save({"models": {"generator": {"class": "Aero", "args": [], "kwargs": None,
                                         "state": model.state_dict()}}}, buf)
    out = tmp_path / "aero.safetensors"
    code, _, err = run_cli("models", "import", "aeromamba", buf, out)
    assert code == 0, err
    assert ("channels=8 growth=1 dconv_depth=1 dconv_comp=2 d_state=16 expand=2 d_conv=4 "
            "(inferred from tensor shapes)") in err
    loaded = models.load_model(str(out))
    assert loaded.config == model.config
    x = torch.randn(1, 2048, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded.restore(x), model.restore(x))


def test_import_of_a_non_checkpoint_is_one_line(run_cli, tmp_path):
    src = tmp_path / "x.bin"
    src.write_bytes(io.BytesIO(b"garbage" * 10).getvalue())
    code, out, err = run_cli("models", "import", "apollo", src, tmp_path / "y.safetensors")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y.safetensors").exists()


def test_wave_u_mamba_widths_are_inferred_and_printed(run_cli, tmp_path):
    from tests.models.test_wave_u_mamba import to_official

    torch.manual_seed(0)
    model = models.build("wave-u-mamba", channels=(8, 8, 16, 16), up_mambas=1).eval()
    src = tmp_path / "g_00100000"
    torch.save({"generator": to_official(model)}, src)
    out = tmp_path / "wum.safetensors"
    code, _, err = run_cli("models", "import", "wave-u-mamba", src, out)
    assert code == 0, err
    assert "channels=8,8,16,16 " in err and "up_mambas=1 " in err
    assert "(inferred from tensor shapes)" in err
    loaded = models.load_model(str(out))
    assert loaded.config == model.config
    x = torch.randn(1, 960, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded.restore(x), model.restore(x))


def test_import_without_out_installs_into_the_model_folder(run_cli, model_dir, tmp_path):
    _container(tmp_path / "pytorch_model.bin", ApolloConfig(feature_dim=16, layer=1))
    code, out, err = run_cli("models", "import", "apollo", tmp_path / "pytorch_model.bin")
    assert code == 0, err
    assert out.strip() == str(model_dir / "apollo.safetensors")
    assert models.find_checkpoint("apollo") == model_dir / "apollo.safetensors"
    code, _, err = run_cli("models", "import", "apollo", tmp_path / "pytorch_model.bin")
    assert code == 1 and "exists (use --overwrite" in err
