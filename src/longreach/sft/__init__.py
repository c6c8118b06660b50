"""Instruction tuning in stages (ChatQA 2): chat formats with answer-only loss masks, blends, packing,
long-context QA synthesis from real documents, stage chaining on the one training loop, long-QA evaluation.

    recipe.py   SFTConfig and `run` (stages 1 -> 2 -> 3)      data.py    records, blends
    format.py   ChatQA prompt / chat template -> ids + mask   pack.py    shards with loss_mask, doc_starts
    synth.py    gold insertion, distractors, synthetic QA    longqa.py  held-out long-document QA accuracy
    tiny.py     the CPU demo's tiny chat model
"""
