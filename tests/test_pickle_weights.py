"""Weights load from safetensors: a model or adapter folder holding only pickles is refused
with a message naming the folder and how to convert, unless the user allows pickles."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from aqa.models.registry import load_backend


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    b = load_backend(str(tiny_model))
    b.add_lora(r=2, alpha=4, dropout=0.0)
    out = tmp_path_factory.mktemp("adapter") / "a"
    b.model.save_pretrained(out, safe_serialization=True)
    return out


def test_a_model_folder_of_pickles_is_refused_unless_allowed(tiny_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"m: weights only as pickle files \(pytorch_model.bin\).*safe_serialization"):
        load_backend(str(folder))
    b = load_backend(str(folder), allow_pickle=True)
    head = next(v for k, v in weights.items() if k.endswith("lm_head.weight"))
    assert torch.equal(b.base_model().lm_head.weight, head)


def test_an_adapter_of_pickles_is_refused_unless_allowed(tiny_model, adapter, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(adapter, folder)
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="pickled: weights only as pickle files"):
        load_backend(str(tiny_model), adapter=str(folder))
    b = load_backend(str(tiny_model))
    with pytest.raises(ValueError, match="adapter_model.bin"):
        b.merge_adapters(folder)
    assert load_backend(str(tiny_model), adapter=str(folder), allow_pickle=True).model is not None
    assert load_backend(str(tiny_model), adapter=str(adapter)).model is not None  # safetensors: no flag needed
