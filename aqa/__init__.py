"""aqa: adapt audio-language models to multiple-choice audio question answering."""

__version__ = "0.1.0"
