"""GGUF models on llama.cpp: continuous batching, prefix cache, embeddings."""
