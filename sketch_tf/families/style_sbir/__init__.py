"""Style-aware sketch-based image retrieval: structure and style branches."""
