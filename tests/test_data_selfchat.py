"""Self-chat data: passages of a real corpus, the real SmolLM2-135M-Instruct's answers in its chat template, and
`data prepare` reading the chat special tokens of such records as special tokens (other text as plain text)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longreach import assets
from longreach.data.config import PrepareConfig
from longreach.data.prepare import prepare
from longreach.data.readers import iter_documents
from longreach.data.shards import PackedShards
from longreach.errors import InputError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for f in sorted(assets.paul_graham_essays().glob("*.txt"))[:2]:
        (d / f.name).write_text(f.read_text())
    return d


def _all_ids(shards_dir):
    s = PackedShards(shards_dir)
    return np.concatenate([s[i]["input_ids"] for i in range(len(s))])


@pytest.mark.parametrize("workers", [1, 2])
def test_special_token_records_encode_special_ids_and_plain_text_does_not(tmp_path, workers):
    from longreach.data.tokenize import load_tokenizer

    tok_path = assets.llama3_tokenizer()
    tok = load_tokenizer(tok_path)
    marker = "<|start_header_id|>"  # one special token of the Llama-3 tokenizer
    special_id = tok.convert_tokens_to_ids(marker)
    rows = [{"text": f"{marker}user<|end_header_id|>\n\nHello there, how are you?", "special_tokens": True},
            {"text": f"A manual that quotes {marker} literally, as plain text."}]
    (tmp_path / "mix.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = list(iter_documents(tmp_path / "mix.jsonl"))
    assert [d.special for d in docs] == [True, False]
    prepare(PrepareConfig(inputs=[str(tmp_path / "mix.jsonl")], tokenizer=str(tok_path), seq_len=8,
                          out=str(tmp_path / "s"), shuffle=False, workers=workers))
    ids = _all_ids(tmp_path / "s").tolist()
    assert ids.count(special_id) == 1  # the chat record's marker only
    plain = tok(f" quotes {marker} literally", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert any(ids[i:i + len(plain)] == plain for i in range(len(ids)))


def test_special_tokens_flag_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["<s> chat", "<s> plain", "<s> unset"], "special_tokens": [True, False, None]}),
                   tmp_path / "t.parquet")
    assert [d.special for d in iter_documents(tmp_path / "t.parquet")] == [True, False, False]


def test_special_tokens_field_must_be_a_bool(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "hi", "special_tokens": "yes"}) + "\n")
    with pytest.raises(InputError, match="special_tokens") as e:
        list(iter_documents(tmp_path / "bad.jsonl"))
    assert "bad.jsonl" in str(e.value) and ":1" in str(e.value)


@pytest.mark.slow
def test_self_chat_with_smollm2_then_prepare(tmp_path, corpus):
    from longreach.data.selfchat import SelfChatConfig, run

    gguf = assets.smollm2_gguf()
    cfg = SelfChatConfig(model=str(gguf), inputs=[str(corpus)], out=str(tmp_path / "chat"), n=3,
                         passage_tokens=[60, 120], max_new_tokens=96, batch_size=3)
    summary = run(cfg)
    gens = [json.loads(x) for x in (tmp_path / "chat" / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 and summary["kept"] == sum(g["score"] for g in gens) >= 1
    kept = [json.loads(x) for x in (tmp_path / "chat" / "self-chat.jsonl").read_text().splitlines()]
    for rec in kept:
        assert rec["special_tokens"] is True and rec["text"].startswith("<|im_start|>")
        user, answer = rec["messages"][0]["content"], rec["messages"][-1]["content"]
        assert user in rec["text"] and answer in rec["text"] and answer
        passage = user.rsplit("\n\n", 1)[0]
        assert passage.endswith(".") and passage in (corpus / rec["source_doc"].split("/")[-1]).read_text()
    # Resuming with other settings is refused; the same settings reuse every answer.
    with pytest.raises(InputError, match="other settings"):
        run(SelfChatConfig(**{**cfg.__dict__, "n": 4}))
    assert run(cfg) == summary
    # data prepare's encoding: the chat template's <|im_start|> is the special token (id 1) in each of the three
    # turns (system, user, assistant); the packed shards carry them.
    from longreach.data.tokenize import load_tokenizer, plain_text_encoder, tokenize_documents

    docs = list(iter_documents(tmp_path / "chat" / "self-chat.jsonl"))
    encoded = list(tokenize_documents(docs, plain_text_encoder(load_tokenizer(str(gguf)))))
    assert [ids.tolist().count(1) for _, ids in encoded] == [3] * len(kept)
    prepare(PrepareConfig(inputs=[str(tmp_path / "chat" / "self-chat.jsonl")], tokenizer=str(gguf), seq_len=64,
                          out=str(tmp_path / "s"), shuffle=False))
    assert 1 in _all_ids(tmp_path / "s").tolist()
