"""Evaluation: backends, tasks (NIAH, perplexity, RULER, InfiniteBench, LongBench, ChatRAG), metrics, reports."""
