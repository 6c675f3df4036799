"""Serving a model on an existing engine (vLLM, SGLang, llama.cpp) with the RoPE override applied."""
