"""The laws, arithmetic anyone can audit: Liu et al.'s extrapolation limit (liu), Men et al.'s retrieval
bound (men), and the RoPE frequency math both use."""
