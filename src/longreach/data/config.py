"""Settings of `longreach data prepare` (YAML files and CLI flags override these defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from longreach.data.shards import SHARD_BYTES
from longreach.data.tokenize import BATCH_CHARS


@dataclass
class PrepareConfig:
    inputs: list[str] = field(default_factory=list)  # corpus files/folders: .jsonl/.json, .parquet, .txt/.md/.rst
    tokenizer: str = ""  # Hugging Face tokenizer folder, tokenizer.json, or .gguf model file
    seq_len: int = 8192  # tokens per packed sequence
    out: str = ""  # output shard directory (appears only when complete)
    sep_mode: str = "sep"  # how documents are joined: sep (separator string), bos_eos, none
    sep: str = "<s>"  # separator string after each document (sep_mode=sep), encoded as plain text
    text_field: str = "text"  # field holding the text in JSON lines / parquet records (dotted for nested)
    source_field: str | None = None  # field naming each record's source; None: from the file/folder name
    join_files: str = "file"  # text folders: one document per file, or per folder ("folder": its files joined)
    on_error: str = "raise"  # bad records: raise (stop with file:line) or skip (count in the manifest)
    upsample_threshold: int = 4096  # documents with more tokens than this are "long"
    upsample_ratio: float = 0.1  # sampling rate of a short document relative to a long one (1 = off)
    upsample_scale: float = 1.0  # tokens written per token read, the same for every source
    shuffle: bool = True  # shuffle document copies (seeded) before packing; False keeps input order
    seed: int = 0  # seed of the up-sampling and the shuffle
    workers: int = 1  # tokenizer processes (1: this process, all cores via the tokenizers thread pool)
    batch_chars: int = BATCH_CHARS  # characters of text per tokenizer batch
    shard_bytes: int = SHARD_BYTES  # size bound of one token shard file
