"""Building blocks shared by model families: attention, rotary embeddings, norms, activations."""
