"""Load models and tokenizers from a Hugging Face folder or a .gguf file; save them in Hugging Face layout.

    from longreach.model.load import load_model, save_model
    model, tok = load_model("model.gguf", dtype="bf16")     # or a folder with config.json + safetensors
    save_model(model, tok, "out/")                            # atomic: written to a temp folder, then renamed

A GGUF file is de-quantized by transformers (packages gguf + accelerate) into a plain float32 model. Reading a
GGUF's metadata is slow in Python (about a minute for SmolLM2-135M on this CPU), so the first load writes the
de-quantized model to a cache folder (LONGREACH_CACHE, default ~/.cache/longreach; LONGREACH_CACHE=off disables)
and later loads read the safetensors from there. `longreach extend --out DIR` converts once, explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.model import logscale, rope

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
ATTN_IMPLEMENTATION = "sdpa"  # PyTorch SDPA: cuDNN/flash kernels on GPU, fused math on CPU


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def resolve_dtype(dtype):
    """torch dtype from None / a torch.dtype / "bf16", "fp32", "fp16" (and their long names)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}", field="dtype")
    return getattr(torch, name)


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("no such model file or folder", path=str(path))
    if path.is_file() and path.suffix != ".gguf":
        raise InputError("expected a Hugging Face model folder or a .gguf file", path=str(path))
    if path.is_dir() and not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
        raise InputError("folder has no config.json (not a Hugging Face model folder)", path=str(path))
    return path


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix == ".gguf"


def gguf_cache_dir(path: str | Path) -> Path | None:
    """Where the de-quantized copy of a GGUF file lives (None when caching is off).

    Keyed by the file's resolved path, size and modification time, so a changed file is converted again."""
    root = os.environ.get("LONGREACH_CACHE", "~/.cache/longreach")
    if root.lower() in ("", "0", "off", "none", "false"):
        return None
    st = Path(path).resolve().stat()
    key = hashlib.sha256(f"{Path(path).resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return Path(root).expanduser() / "gguf" / f"{Path(path).stem}-{key}"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return is_gguf(path) or any((path / name).exists() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | Path):
    """The tokenizer of a Hugging Face folder or a .gguf file (offline)."""
    from transformers import AutoTokenizer

    path = _check_path(path)
    if not has_tokenizer(path):
        raise InputError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})", path=str(path))
    if is_gguf(path):
        cached = gguf_cache_dir(path)
        if cached is not None and (cached / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(cached)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(path)


def tokenizer_hash(tok) -> str | None:
    """The tokenizer's hash as the data pipeline records it in shard manifests (None without a tokenizer)."""
    if tok is None:
        return None
    from longreach.data.tokenize import tokenizer_hash as data_hash  # data.tokenize imports this module
    return data_hash(tok)


def _from_folder(path: Path, dtype, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto",
                                                attn_implementation=attn)


def _from_gguf(path: Path, attn: str):
    """De-quantize a GGUF into a plain float32 model (no quantizer left attached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation=attn)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    _drop_quantization(model)
    model.config.name_or_path = str(path)
    return model, tok


def _drop_quantization(model) -> None:
    # GGUF weights arrive de-quantized; the leftover quantization_config would make the saved folder look
    # like a GGUF-quantized checkpoint to the next loader.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)


def load_model(path: str | Path, dtype=None, device: str = "cpu", attn_implementation: str = ATTN_IMPLEMENTATION):
    """(model, tokenizer) from a Hugging Face folder or a .gguf file, in eval mode on `device`.

    The tokenizer is None for a folder without tokenizer files (e.g. weights made by `tiny_llama`).
    dtype: None keeps the checkpoint's dtype (GGUF: float32); "bf16"/"fp32"/"fp16" or a torch dtype converts.
    Raises RuntimeError if the loaded rotary embedding does not match the config's RoPE fields."""
    path = _check_path(path)
    dtype = resolve_dtype(dtype)
    if is_gguf(path):
        cached = gguf_cache_dir(path)
        if cached is not None and (cached / "config.json").exists():
            model = _from_folder(cached, dtype, attn_implementation)
            tok = load_tokenizer(cached)
        else:
            _log(f"load: de-quantizing {path.name} (slow the first time; cached afterwards"
                 f"{' in ' + str(cached) if cached else ''})")
            model, tok = _from_gguf(path, attn_implementation)
            if cached is not None and not (cached / "config.json").exists():
                try:
                    save_model(model, tok, cached, extra={"stage": "gguf-cache", "source": str(path)})
                except OSError as e:  # a read-only or full cache only costs speed
                    _log(f"load: could not cache the de-quantized model in {cached}: {e}")
            if dtype is not None:
                model = model.to(dtype)
                rope.refresh_rotary(model)  # .to(dtype) also cast inv_freq; RoPE angles stay fp32
    else:
        model = _from_folder(path, dtype, attn_implementation)
        tok = load_tokenizer(path) if has_tokenizer(path) else None
    rope.check_rotary(model)
    logscale.install(model)  # a query log scale in config.json (longreach extend --query-log-scale)
    return model.to(device).eval(), tok


def load_config(path: str | Path):
    """The config of a Hugging Face folder or a .gguf file (a GGUF is de-quantized once, then read from the cache)."""
    from transformers import AutoConfig

    path = _check_path(path)
    if is_gguf(path):
        cached = gguf_cache_dir(path)
        if cached is not None and (cached / "config.json").exists():
            return AutoConfig.from_pretrained(cached)
        return load_model(path)[0].config
    return AutoConfig.from_pretrained(path)


def write_config_for_use(folder: str | Path, config: Any) -> None:
    """Rewrite FOLDER/config.json as a user loads it: the KV cache on (training switches it off; a saved model
    is also for generation), no GGUF quantization block, and transformers-4 RoPE fields beside the new ones."""
    cfg_path = Path(folder) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg["use_cache"] = True
    cfg.update(rope.legacy_fields(config))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


RECORD = "longreach.json"  # what made a model or checkpoint folder: stage, source, settings, lineage


def read_record(path: str | Path) -> dict[str, Any]:
    """The longreach.json of a model or checkpoint folder ({} if it has none, e.g. a .gguf file)."""
    record = Path(path) / RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def save_model(model, tokenizer, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write safetensors + config + tokenizer in Hugging Face layout (and `extra` as longreach.json).

    Atomic: everything is written to a temporary sibling folder that is then renamed over `out_dir`, so a
    reader never sees a half-written checkpoint. config.json also carries transformers-4 RoPE fields."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the checkpoint is an ordinary folder
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_config_for_use(tmp, model.config)
        if extra is not None:
            (tmp / RECORD).write_text(json.dumps(extra, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Two renames: a directory cannot replace a non-empty one in one step. The old copy comes back on failure.
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}" if out_dir.exists() else None
    if old is not None:
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir
