"""Small mechanisms every layer may use (files, ...): this package imports nothing else of
sketch_tf, so data/, models/, export/ and train/ can all depend on it."""
