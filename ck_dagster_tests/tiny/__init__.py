"""Tests of the tiny model, its tokenizer and data, and fine-tuning it with tune run."""
