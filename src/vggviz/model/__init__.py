"""A VGG with weights: architectures, loading, conv layers, hooks, receptive fields."""
