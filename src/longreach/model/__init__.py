"""Models: loading (Hugging Face folder or GGUF), RoPE schemes and context extension, tiny test configs."""
