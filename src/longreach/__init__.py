"""longreach: long context for open LLMs (ChatQA 2 recipe)."""

__version__ = "0.1.0"
