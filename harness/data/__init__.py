"""Data in: hub access with the offline fallback, JSON-lines reading, corpora to documents to tokens."""
