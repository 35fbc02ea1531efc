"""Text generation: GenerationConfig, decoding strategies, caches, logits processors, streamers."""
