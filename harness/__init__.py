"""rope-harness: how far past its training length does a RoPE model really work?"""

__version__ = "0.1.0"
