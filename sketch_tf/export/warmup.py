"""TF Serving warmup requests (`assets.extra/tf_serving_warmup_requests`).

The file is a TFRecord of `tensorflow.serving.PredictionLog` protos. TensorFlow ships
`TensorProto` but not the serving protos (the `tensorflow-serving-api` wheel depends on the
full `tensorflow` package, which would replace `tensorflow-cpu`), so the three small wrapper
messages are written here in protobuf wire format from their public .proto definitions:

    PredictionLog { PredictLog predict_log = 6; }
    PredictLog    { PredictRequest request = 1; }
    PredictRequest{ ModelSpec model_spec = 1; map<string, TensorProto> inputs = 2; }
    ModelSpec     { string name = 1; string signature_name = 3; }
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

_LEN = 2  # wire type: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | _LEN) + _varint(len(payload)) + payload


def predict_log_bytes(model_name: str, signature_name: str, inputs: dict[str, Any]) -> bytes:
    """One serialized PredictionLog holding a PredictRequest for `signature_name`.

    Args:
      inputs: input name -> value (numpy array, list of bytes for tf.string inputs, ...),
        converted with `tf.make_tensor_proto`.
    """
    spec = _field(1, model_name.encode()) + _field(3, signature_name.encode())
    request = _field(1, spec)
    for key in sorted(inputs):
        value = inputs[key]
        if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
            tensor = tf.make_tensor_proto(value.tolist())
        else:
            tensor = tf.make_tensor_proto(value)
        entry = _field(1, key.encode()) + _field(2, tensor.SerializeToString())
        request += _field(2, entry)
    return _field(6, _field(1, request))


def write_warmup_requests(path: str, model_name: str, inputs: dict[str, dict[str, Any]]) -> None:
    """Writes one request per signature (`inputs`: signature name -> input dict)."""
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name in sorted(inputs):
            writer.write(predict_log_bytes(model_name, signature_name, inputs[signature_name]))


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    """Decodes the varint starting at `data[i]`; returns (value, index after it)."""
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _read_fields(data: bytes) -> list[tuple[int, bytes]]:
    """Minimal wire-format reader for length-delimited fields (used by tests and checks)."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        if key & 7 != _LEN:
            raise ValueError(f"unexpected wire type {key & 7} in warmup record")
        length, i = _read_varint(data, i)
        out.append((key >> 3, data[i : i + length]))
        i += length
    return out


def read_warmup_requests(path: str) -> list[dict[str, Any]]:
    """Parses a warmup file back: a list of {model, signature, inputs: name -> ndarray}."""
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        ((num, predict_log),) = _read_fields(record)
        assert num == 6, "not a predict_log"
        fields = dict(_read_fields(predict_log))
        req = {"inputs": {}}
        for num, payload in _read_fields(fields[1]):
            if num == 1:
                spec = dict(_read_fields(payload))
                req["model"] = spec.get(1, b"").decode()
                req["signature"] = spec.get(3, b"").decode()
            elif num == 2:
                entry = dict(_read_fields(payload))
                proto = tf.make_tensor_proto(0)
                proto.ParseFromString(entry[2])
                req["inputs"][entry[1].decode()] = tf.make_ndarray(proto)
        requests.append(req)
    return requests
