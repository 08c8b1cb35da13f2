"""sketch_tf: learning from sketches with TensorFlow / Keras 3.

Three model families share one record schema, one input layer, one training loop and one
export path: SketchZooms correspondence descriptors, zero-shot sketch-based image retrieval
with a gradient reversal domain classifier, and style-aware sketch-based image retrieval.
"""

__version__ = "0.1.0"
