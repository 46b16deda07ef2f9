"""Every family's load puts its weights straight on the device it is given, never on the CPU
first (aqa/models/base.py `device_load_kwargs`): under `accelerate launch` a load to the CPU held
the whole model in every process's host memory.

There is no GPU on the test machines; the device here is `meta`. A tensor sent there leaves the
host as one sent to a GPU does, so a load that reads to the CPU and moves after shows in two ways:
its weights come back on the CPU, which `Backend.from_parts` (which no longer moves anything)
refuses, or, where a loader moves a part itself, as host memory that grows with the model,
measured in a fresh process by bench/load_memory.py."""

import sys
from pathlib import Path

import pytest
import torch

from aqa.models.registry import load_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import load_memory  # noqa: E402

META = torch.device("meta")


@pytest.fixture(scope="module")
def tiny_kimi(tmp_path_factory):
    from aqa.models.tiny.kimi_audio import build_tiny_kimi

    return build_tiny_kimi(tmp_path_factory.mktemp("kimi") / "model")


@pytest.fixture(scope="module")
def folder_of(tiny_model, tiny_family, tiny_kimi):
    return lambda family: {"qwen2-audio": tiny_model, "kimi-audio": tiny_kimi}.get(family) or tiny_family(family)


def all_tensors(backend):
    tensors = dict([*backend.model.named_parameters(), *backend.model.named_buffers()])
    vq = getattr(backend.processor, "speech_tokenizer", None)  # Kimi-Audio's, loaded by aqa itself
    if vq is not None:
        tensors.update({f"speech_tokenizer.{k}": v for k, v in [*vq.named_parameters(), *vq.named_buffers()]})
    return tensors


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen2.5-omni", "qwen3-omni", "audio-flamingo3", "voxtral",
                                    "kimi-audio"])
def test_every_family_loads_straight_onto_the_device_it_is_given(folder_of, family):
    path = str(folder_of(family))
    on_meta = load_backend(path, device="meta", dtype="bf16")
    on_cpu = load_backend(path, device="cpu", dtype="bf16")
    meta, cpu = all_tensors(on_meta), all_tensors(on_cpu)
    assert {t.device for t in meta.values()} == {META}
    # The same model, transformers' conversions (Qwen3-Omni's stacked experts) made on the device.
    assert {k: (t.shape, t.dtype) for k, t in meta.items()} == {k: (t.shape, t.dtype) for k, t in cpu.items()}
    # transformers' own layers, as a model loaded to the CPU always had: a device map would
    # otherwise swap in hub kernels for a GPU.
    assert on_meta.base_model().use_kernels is False and on_cpu.base_model().use_kernels is False


def test_from_parts_refuses_weights_left_on_another_device(tiny_model):
    b = load_backend(str(tiny_model), device="cpu")
    with pytest.raises(ValueError, match=r"weights of the loaded Qwen2AudioForConditionalGeneration are not on meta "
                                         r"\(e\.g\. .+ on cpu\)"):
        type(b).from_parts(b.model, b.processor, META)


def test_a_cpu_with_an_index_is_the_cpu(tiny_model):
    """accelerate's device on a CPU machine is "cpu:0"; PyTorch's CPU tensors have no index."""
    b = load_backend(str(tiny_model), device="cpu:0")
    assert {t.device for t in all_tensors(b).values()} == {torch.device("cpu")}


def expert_mib(folder: Path) -> float:
    """MiB of the per-expert weights in a checkpoint (which transformers stacks on loading)."""
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                if ".mlp.experts." in k:
                    s = fh.get_slice(k)
                    total += torch.Size(s.get_shape()).numel() * 4  # fp32
    return total / 2**20


@pytest.mark.parametrize("family, sizes, dtype", [
    # fp32 file, bf16 load: transformers converts; to the CPU that is a copy of every weight.
    ("qwen2-audio", dict(decoder_dim=128, model_vocab=80000), "bf16"),
    # fp32 file, fp32 load: no conversion, but the per-expert tensors are stacked into new ones.
    ("qwen3-omni", dict(decoder_dim=128, num_experts=64, expert_dim=256), "fp32"),
    # aqa's own loader (the speech encoder, aqa/models/weights.py) converting to bf16.
    ("kimi-audio", dict(whisper_dim=384, whisper_layers=12), "bf16"),
])
def test_loading_to_the_device_does_not_copy_the_model_into_host_memory(tmp_path, family, sizes, dtype):
    """The control (read to the CPU, then moved: what aqa did) shows that the probe sees a host
    copy of the model; the direct load makes none."""
    folder = load_memory.build(family, sizes, tmp_path / family)
    # One process, the direct load first: one start-up instead of two, and a direct load that
    # makes no copy leaves nothing freed that the control could reuse without growing.
    r = load_memory.measure(folder, "meta", dtype, ["direct", "moved"], threads=1)
    direct, moved = r["direct"], r["moved"]
    copied = expert_mib(folder) if family == "qwen3-omni" else direct["weights_mib"]
    assert copied > 40
    assert direct["anon_mib"] < 0.25 * copied, (direct, copied)
    # Checked second: a direct load that copied would have left freed memory for this one to reuse.
    assert moved["anon_mib"] > 0.8 * copied, (moved, copied)
