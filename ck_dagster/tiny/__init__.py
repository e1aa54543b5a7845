"""tiny-llama: a Llama-3.2-shaped model small enough to pre-train and fine-tune on a laptop CPU.

``make.make_tiny_model`` writes the HF-format model folder, ``data.make_capitalization_dataset``
the data it is fine-tuned on; ``model`` holds the torchtune builders the configs name.
"""

#: bump whenever make_tiny_model or make_capitalization_dataset would write something different:
#: caches of built models and data (the test fixtures) are keyed by it.
VERSION = "2"
