"""Checkpoints without weights and with: RoPE overrides, GGUF files, describe / load / verify, the zoo."""
