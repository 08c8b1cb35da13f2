"""Zero-shot sketch-based image retrieval with a gradient reversal domain classifier."""
