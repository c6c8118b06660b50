"""Long-context data: read corpora, tokenize, up-sample long documents per source, pack, write shards.

Modules: readers (Document, iter_documents), tokenize (load_tokenizer, tokenizer_hash, tokenize_documents),
upsample (the per-source rule), pack (separator modes, Packer), shards (ShardWriter, PackedShards,
epoch_order), config (PrepareConfig), prepare (the `longreach data prepare` pipeline).
"""
