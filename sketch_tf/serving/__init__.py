"""Clients for the SavedModels of `sketch_tf.export` served by TF Serving (REST and gRPC)."""

from sketch_tf.serving.client import (
    DEFAULT_SIGNATURE,
    GRPC_INSTALL_HINT,
    GrpcClient,
    RestClient,
    ServingError,
    TensorInfo,
)

__all__ = [
    "DEFAULT_SIGNATURE",
    "GRPC_INSTALL_HINT",
    "GrpcClient",
    "RestClient",
    "ServingError",
    "TensorInfo",
]
