"""rope-harness measures how far past its training length a RoPE model really works; this file holds the
version."""

__version__ = "0.1.0"
