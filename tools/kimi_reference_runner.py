"""Reference runner for tools/check_kimi_equivalence.py: upstream Kimi-Audio's own code, run on
a CPU in float32, on a checkpoint folder in the official layout.

Nothing of upstream is in this repository. This script imports it from folders the person
running the check cloned (exact commands and commits: docs/kimi_audio.md):

- `--kimi-audio DIR`: MoonshotAI/Kimi-Audio. Used: `kimia_infer` (KimiAPromptManager, its
  Whisper-large-v3 feature code, Glm4Tokenizer, the KimiAudio generation loop and sampler) and
  the LM file `finetune_codes/modeling_kimia.py` (Moonshot's copy of the checkpoint's
  modeling_moonshot_kimia.py, with its configuration_moonshot_kimia.py);
- `--glm-4-voice DIR`: THUDM/GLM-4-Voice (`speech_tokenizer`), which Kimi-Audio expects as its
  git submodule `kimia_infer/models/tokenizer/glm4`; not needed when that submodule is checked out;
- `--tokenizer-code DIR`: the checkpoint's code files (moonshotai/Kimi-Audio-7B-Instruct,
  cloned without its weights): `tokenization_kimia.py` (TikTokenTokenizer), which tokenizes
  the raw question text on the checkpoint's `tiktoken.model`. `--lm-code DIR` may point at the
  same folder to use the checkpoint's modeling_moonshot_kimia.py instead of Kimi-Audio's copy.

Upstream needs CUDA, flash-attn and bfloat16. These runtime patches (nothing on disk is edited)
let it run on a CPU in float32 and change none of its arithmetic besides the precision:

- a `flash_attn` module whose `flash_attn_func` is exact float32 softmax attention (causal with
  flash-attn >= 2.1's bottom-right alignment, grouped key/value heads repeated); its variable-
  length functions raise, since one unpadded prompt never reaches them;
- in the LM file, the flash-attn path's float32 -> float16 cast of q/k/v is skipped (its module
  sees `torch.float16` as float32); in Kimi-Audio's Whisper code, the bfloat16 cast of the mel
  is skipped the same way, and the prompt manager is built without `.bfloat16()`;
- `torch.cuda.current_device()` answers "cpu";
- `librosa.load` reads the (16 kHz) WAV with soundfile; `torchaudio`, used only to resample
  other rates, is a stub that raises if called; the audio detokenizer (speech output) is a stub;
- KimiAPromptManager and KimiAudio are built from local folders (their constructors hard-wire
  hub ids and `AutoTokenizer(trust_remote_code=True)`); every method that runs is upstream's.

    REF_PYTHON tools/kimi_reference_runner.py --kimi-audio K --glm-4-voice G --tokenizer-code T \\
        --ckpt MODEL --cases cases.json --out-dir OUT

`cases.json` lists {"id", "wav", "question", "max_new_tokens"}; OUT/<id>.npz gets the prompt
(audio_input_ids, text_input_ids, is_continuous_mask), question_ids (the question alone through
upstream's tokenizer), glm_tokens, whisper_feature (N, 4 x width), text_logits (T, V) float32
of one user turn holding the question and then the clip, and `generated`: upstream's greedy text
tokens (KimiAudio.generate, text output, temperature 0), with the text end token appended when
the loop stopped on it (upstream returns the tokens before it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch


class _TorchWith(types.ModuleType):
    """`torch`, as one upstream module sees it, with some dtypes standing for float32: how the
    half-precision casts are skipped without editing upstream's files."""

    def __init__(self, **dtypes):
        super().__init__("torch")
        self._dtypes = dtypes

    def __getattr__(self, name):
        return self._dtypes[name] if name in self._dtypes else getattr(torch, name)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False, **_):
    """flash-attn's layout (batch, length, heads, dim), computed exactly in float32."""
    if dropout_p:
        raise NotImplementedError("dropout in the reference attention")
    dtype = q.dtype
    q, k, v = (x.float().transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    if k.shape[1] != q.shape[1]:
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], 1) for x in (k, v))
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        # bottom-right aligned, as flash-attn >= 2.1: query i sees keys j <= i + (tk - tq)
        allowed = torch.arange(tk)[None, :] <= torch.arange(tq)[:, None] + (tk - tq)
        s = s.masked_fill(~allowed, float("-inf"))
    p = s.softmax(-1)
    out = (p @ v).transpose(1, 2).contiguous().to(dtype)  # flash-attn returns a contiguous tensor
    return (out, None, p) if return_attn_probs else out


def _unsupported(*_, **__):
    raise NotImplementedError("padded batches do not reach the reference attention (one prompt at a time)")


def _librosa_load(path, sr=16000, **_):
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != sr:
        raise ValueError(f"{path}: {rate} Hz; the reference runner reads {sr} Hz WAVs only (no resampling)")
    return audio.mean(1) if audio.shape[1] > 1 else audio[:, 0], rate


def install_stand_ins() -> None:
    """The modules upstream imports that cannot run here, replaced before upstream is imported.
    transformers is imported first, so that its own checks see that they are absent."""
    importlib.import_module("transformers")
    fa = types.ModuleType("flash_attn")
    fa.flash_attn_func = flash_attn_func
    fa.flash_attn_varlen_func = fa.flash_attn_qkvpacked_func = fa.flash_attn_varlen_qkvpacked_func = _unsupported
    pad = types.ModuleType("flash_attn.bert_padding")
    pad.index_first_axis = pad.pad_input = pad.unpad_input = _unsupported
    fa.bert_padding = pad
    librosa = types.ModuleType("librosa")
    librosa.load = _librosa_load
    ta = types.ModuleType("torchaudio")
    ta.load = _unsupported
    ta.transforms = types.SimpleNamespace(Resample=_unsupported)
    detok = types.ModuleType("kimia_infer.models.detokenizer")
    detok.get_audio_detokenizer = _unsupported
    for m in (fa, pad, librosa, ta, detok):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
        sys.modules[m.__name__] = m
    torch.cuda.current_device = lambda: "cpu"


def import_file_package(name: str, folder: Path) -> types.ModuleType:
    """`folder` as a package named `name`, so its files' relative imports work."""
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    pkg = importlib.util.module_from_spec(spec)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg
    return pkg


def import_upstream(kimi_audio: Path, glm_4_voice: Path | None, lm_code: Path, tokenizer_code: Path):
    """Upstream's modules, patched as the module docstring says."""
    install_stand_ins()
    sys.path.insert(0, str(kimi_audio))
    if glm_4_voice is not None:  # Kimi-Audio's submodule, from a separate clone
        importlib.import_module("kimia_infer.models.tokenizer")
        import_file_package("kimia_infer.models.tokenizer.glm4", glm_4_voice)
    pm = importlib.import_module("kimia_infer.api.prompt_manager")
    whisper = importlib.import_module("kimia_infer.models.tokenizer.whisper_Lv3.whisper")
    whisper.torch = _TorchWith(bfloat16=torch.float32)
    kimia = importlib.import_module("kimia_infer.api.kimia")

    import transformers.utils

    # The LM file refuses to import without flash-attn; the stand-in above is what it gets.
    real = transformers.utils.is_flash_attn_2_available
    transformers.utils.is_flash_attn_2_available = lambda: True
    try:
        import_file_package("kimia_lm_code", lm_code)
        name = "modeling_moonshot_kimia" if (lm_code / "modeling_moonshot_kimia.py").is_file() else "modeling_kimia"
        lm = importlib.import_module(f"kimia_lm_code.{name}")
    finally:
        transformers.utils.is_flash_attn_2_available = real
    lm.torch = _TorchWith(float16=torch.float32)
    spec = importlib.util.spec_from_file_location("tokenization_kimia", tokenizer_code / "tokenization_kimia.py")
    tok = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tok)
    return types.SimpleNamespace(pm=pm, kimia=kimia, lm=lm, tok=tok)


def build(up, ckpt: Path):
    """KimiAudio (text output, no detokenizer) on `ckpt`, its attributes set as its constructor
    sets them, from the local folders."""
    from kimia_infer.models.tokenizer.glm4_tokenizer import Glm4Tokenizer
    from kimia_infer.models.tokenizer.whisper_Lv3.whisper import WhisperEncoder
    from kimia_infer.utils.special_tokens import instantiate_extra_tokens

    config = up.lm.KimiAudioConfig.from_pretrained(ckpt)
    alm = up.lm.MoonshotKimiaForCausalLM.from_pretrained(ckpt, config=config, torch_dtype=torch.float32).eval()
    pm = up.pm.KimiAPromptManager.__new__(up.pm.KimiAPromptManager)
    pm.audio_tokenizer = Glm4Tokenizer(str(ckpt / "glm-4-voice-tokenizer"))
    pm.whisper_model = WhisperEncoder(str(ckpt / "whisper-large-v3"), mel_batch_size=20).eval()
    pm.text_tokenizer = up.tok.TikTokenTokenizer(vocab_file=str(ckpt / "tiktoken.model"))
    pm.extra_tokens = instantiate_extra_tokens(pm.text_tokenizer)
    pm.kimia_text_audiodelaytokens = config.kimia_mimo_audiodelaytokens
    pm.kimia_token_offset = config.kimia_token_offset
    ka = up.kimia.KimiAudio.__new__(up.kimia.KimiAudio)
    ka.alm, ka.prompt_manager, ka.detokenizer = alm, pm, None
    ka.kimia_text_audiodelaytokens = config.kimia_mimo_audiodelaytokens
    ka.kimia_token_offset = config.kimia_token_offset
    ka.extra_tokens = pm.extra_tokens
    ka.eod_ids = [pm.extra_tokens.msg_end, pm.extra_tokens.media_end]
    return ka


@torch.no_grad()
def run_case(ka, wav: str, question: str, max_new_tokens: int) -> dict:
    pm = ka.prompt_manager
    chats = [{"role": "user", "message_type": "text", "content": question},
             {"role": "user", "message_type": "audio", "content": wav}]
    history = pm.get_prompt(chats, output_type="text")
    audio_ids, text_ids, cont, _, _ = history.to_tensor()
    # As KimiAudio._generate_loop calls it (first step, the whole prompt).
    _, text_logits, _ = ka.alm.forward(input_ids=audio_ids, text_input_ids=text_ids,
                                       whisper_input_feature=history.continuous_feature, is_continuous_mask=cont,
                                       position_ids=torch.arange(audio_ids.shape[1])[None], past_key_values=None,
                                       return_dict=False)
    loop, seen = ka._generate_loop, []

    def spy(**kw):  # KimiAudio.generate returns text only; its loop returns the token ids
        seen.append(loop(**kw))
        return seen[-1]

    ka._generate_loop = spy
    try:
        ka.generate(chats, output_type="text", text_temperature=0.0, audio_temperature=0.0,
                    max_new_tokens=max_new_tokens)
    finally:
        del ka._generate_loop
    generated = list(seen[-1][1])
    if len(generated) < max_new_tokens:  # stopped on the end token, which upstream leaves out
        generated.append(pm.extra_tokens.kimia_text_eos)
    a = audio_ids[0].numpy()
    return dict(audio_input_ids=a, text_input_ids=text_ids[0].numpy(), is_continuous_mask=cont[0].numpy(),
                question_ids=np.array(pm._tokenize_text(question), dtype=np.int64),
                glm_tokens=a[cont[0].numpy()] - pm.kimia_token_offset,
                whisper_feature=torch.cat([f.reshape(-1, f.shape[-1]) for f in history.continuous_feature]).float().numpy(),
                text_logits=text_logits[0].float().numpy(), generated=np.array(generated, dtype=np.int64))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kimi-audio", required=True, type=Path, help="a clone of MoonshotAI/Kimi-Audio")
    ap.add_argument("--glm-4-voice", type=Path, help="a clone of THUDM/GLM-4-Voice (if Kimi-Audio's submodule is absent)")
    ap.add_argument("--tokenizer-code", required=True, type=Path,
                    help="a folder with the checkpoint's tokenization_kimia.py")
    ap.add_argument("--lm-code", type=Path,
                    help="a folder with the LM file and its config class (default: Kimi-Audio's finetune_codes/)")
    ap.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder in the official layout")
    ap.add_argument("--cases", required=True, type=Path, help='JSON list of {"id", "wav", "question", "max_new_tokens"}')
    ap.add_argument("--out-dir", required=True, type=Path, help="where <id>.npz are written")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    up = import_upstream(args.kimi_audio.resolve(), args.glm_4_voice and args.glm_4_voice.resolve(),
                         (args.lm_code or args.kimi_audio / "finetune_codes").resolve(), args.tokenizer_code.resolve())
    torch.manual_seed(0)
    ka = build(up, args.ckpt)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for case in json.loads(args.cases.read_text()):
        out = run_case(ka, case["wav"], case["question"], int(case["max_new_tokens"]))
        np.savez(args.out_dir / f"{case['id']}.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
