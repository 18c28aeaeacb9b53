"""Dense safetensors models on PyTorch + transformers, tensor parallelism included."""
