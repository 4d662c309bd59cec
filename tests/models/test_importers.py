import os
import pickle

import pytest
import torch

from upsr.errors import CheckpointError, UsageError
from upsr.models.importers import Opaque, safe_load, strip_prefix


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["UPSR_TEST_PWNED"],))


class _Config:
    """Stands in for a class the official pickle references (e.g. OmegaConf's DictConfig)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_safe_load_runs_nothing_and_keeps_tensors(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("UPSR_TEST_PWNED", str(flag))
    w = torch.randn(3, 4)
    obj = {"state_dict": {"module.w": w, "module.b": torch.arange(5)},
           "evil": _Evil(), "args": _Config(lr=3e-4, name="x"), "klass": _Config}
    path = tmp_path / "ckpt.th"
    torch.save(obj, path)
    loaded = safe_load(path)
    assert not flag.exists()
    assert torch.equal(loaded["state_dict"]["module.w"], w)
    assert loaded["state_dict"]["module.b"].dtype == torch.int64
    assert isinstance(loaded["evil"], Opaque) and loaded["evil"].name.endswith("system")
    assert loaded["evil"].args == ("touch " + str(flag),)
    cfg = loaded["args"]
    assert isinstance(cfg, Opaque) and cfg.name.endswith("_Config")
    assert cfg.state == {"lr": 3e-4, "name": "x"}
    assert isinstance(loaded["klass"], type) and issubclass(loaded["klass"], Opaque)
    # the same file through real pickle semantics would execute the payload
    torch.load(path, weights_only=False)
    assert flag.exists()


def test_safe_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        safe_load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        safe_load(bad)
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        safe_load(legacy)


def test_strip_prefix():
    assert strip_prefix({"module.a": 1, "b": 2}, "module.") == {"a": 1, "b": 2}


def test_import_unknown_kind_is_usage_error(tmp_path):
    from upsr.models.importers import import_official

    with pytest.raises(UsageError, match="unknown model"):
        import_official("nosuch", tmp_path / "x.pt", tmp_path / "y.safetensors")
