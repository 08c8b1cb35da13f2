"""Clients for the SavedModels of `sketch_tf.export.serving.export_saved_model`, served by
TF Serving (`tensorflow_model_server`): `RestClient` (REST API, standard library only) and
`GrpcClient` (`tensorflow.serving.PredictionService`, needs the `tensorflow-serving-api`
protos). Both have the same `predict(inputs, signature)`:

    # The README's server: REST on 8501, gRPC on 8500, the export folder mounted where
    # models.config points (model name = the family name for the main job's exports).
    docker run -p 8500:8500 -p 8501:8501 \\
        -v "$PWD/runs/main/zs_sbir/export:/models/zs_sbir" tensorflow/serving \\
        --model_config_file=/models/zs_sbir/models.config \\
        --enable_batching --batching_parameters_file=/models/zs_sbir/batching_parameters.txt

    from sketch_tf.serving import GrpcClient, RestClient, ServingError

    with open("sketch.png", "rb") as f:
        png = f.read()                                  # encoded image bytes (PNG / JPEG)
    rest = RestClient("localhost", 8501, model="zs_sbir")
    out = rest.predict({"images": [png]}, signature="embed_sketch")
    out["embedding"]                                    # float32 [1, E]
    # version=N asks for one version (the export's models.config loads only the newest).
    with GrpcClient("localhost", 8500, model="zs_sbir") as grpc_client:
        out = grpc_client.predict({"images": [png, png]}, signature="embed_sketch")
    out["embedding"]                                    # float32 [2, E]
    try:
        rest.predict({"images": [b"not an image"]}, signature="embed_sketch")
    except ServingError as e:
        e.code, e.http_status, e.input_name  # "INVALID_ARGUMENT", 400, "images"

Inputs are a dict {signature input name: array-like}: numpy arrays, Python scalars and
(nested) lists, `tf.Tensor`s; binary values (`bytes`, numpy object / bytes arrays, tf.string
tensors) for tf.string inputs, `str` values are sent as their UTF-8 bytes. Outputs come back
as {output name: numpy array}, tf.string outputs as object arrays of `bytes`.

Both clients read the model's signatures once (`metadata()`, TF Serving's GetModelMetadata,
cached per client) to know the exact dtypes: the gRPC client casts numeric inputs to the
signature's dtype (a float64 array for a float32 input, a Python int for an int32 one; TF
Serving rejects a TensorProto of another dtype), and the REST client gives outputs their
signature dtype (JSON has none) and names the output of a one-output signature (TF Serving's
REST API omits that name). `use_metadata=False` skips that request; REST outputs then come
back as float32 for floats, int64 for integers, and a one-output signature's output is named
"outputs".

Each request has a timeout (`timeout_s`, seconds, for each attempt); a request the server
answers UNAVAILABLE (gRPC `StatusCode.UNAVAILABLE`; REST: HTTP 503, or no connection: refused,
reset, host unreachable) is retried up to `retries` times after `backoff_s`, 2 * `backoff_s`,
4 * `backoff_s`, ... seconds; any other failure is raised at once. Every failure is a
`ServingError` naming the model, version, signature, server address and, where known, the
input at fault.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
#: How to install the protos of `GrpcClient` (the wheel's metadata asks for the full
#: `tensorflow` package, which would replace tensorflow-cpu: hence no dependencies).
GRPC_INSTALL_HINT = "pip install --no-deps 'tensorflow-serving-api==2.21.*'"
#: Longest wait between two attempts, seconds.
MAX_BACKOFF_S = 30.0

#: HTTP status of TF Serving's REST API -> the canonical (gRPC) status behind it.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: tensorflow.DataType: name, enum value, numpy dtype (None: no exact numpy type here).
_DTYPES = [
    ("DT_FLOAT", 1, np.float32),
    ("DT_DOUBLE", 2, np.float64),
    ("DT_INT32", 3, np.int32),
    ("DT_UINT8", 4, np.uint8),
    ("DT_INT16", 5, np.int16),
    ("DT_INT8", 6, np.int8),
    ("DT_STRING", 7, np.object_),
    ("DT_COMPLEX64", 8, np.complex64),
    ("DT_INT64", 9, np.int64),
    ("DT_BOOL", 10, np.bool_),
    ("DT_BFLOAT16", 14, None),
    ("DT_UINT16", 17, np.uint16),
    ("DT_COMPLEX128", 18, np.complex128),
    ("DT_HALF", 19, np.float16),
    ("DT_UINT32", 22, np.uint32),
    ("DT_UINT64", 23, np.uint64),
]
_DTYPE_BY_NAME = {name: dt for name, _, dt in _DTYPES}
_DTYPE_BY_ENUM = {num: dt for _, num, dt in _DTYPES}
#: Where a server error names a signature input: our signatures' own checks ("input `images`:
#: ..."), then TF Serving's input validation ("Missing but required: {k}", "Sent extra: {x}")
#: and JSON decoding ("... key: images of 'inputs' list ...").
_INPUT_PATTERNS = (
    re.compile(r"input `([^`]+)`"),
    re.compile(r"Missing but required: \{([^},]+)"),
    re.compile(r"Sent extra: \{([^},]+)"),
    re.compile(r"does not have named input: ([\w./-]+)"),
    re.compile(r"key: ([\w./-]+) of '(?:inputs|instances)'"),
)
#: Metadata failures that the Predict call would meet too (raised); on any other (say, a
#: server without the metadata API) the client goes on without dtype information.
_FATAL_METADATA_CODES = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "CANCELLED",
        "RESOURCE_EXHAUSTED",
    }
)


# eq=False, repr=False: an exception compares by identity and shows its message.
@dataclasses.dataclass(kw_only=True, eq=False, repr=False)
class ServingError(RuntimeError):
    """A failed request to the model server, or an input the client could not send.

    The message names the operation, model, version ("latest" when none was asked for),
    signature, the server's address, the input at fault when the server's error text names one
    (e.g. "input `images`: expected complete PNG/JPEG image bytes ...") or the client rejected
    it, the status and the server's message.

    Attributes:
      model, version (int or None = latest), signature (None for `metadata()`), address.
      operation: "Predict" or "GetModelMetadata".
      code: canonical status name, for both protocols: "INVALID_ARGUMENT", "NOT_FOUND",
        "UNAVAILABLE", "DEADLINE_EXCEEDED", ... (from the HTTP status for REST).
      http_status: the REST API's HTTP status (None for gRPC and for errors without a reply).
      grpc_code: the `grpc.StatusCode` (None for REST).
      server_message: the server's error text (REST `{"error": ...}`, gRPC details); None when
        the failure happened in the client (`message` then says why).
      message: the failure's own text (the server's message, or the client's reason).
      input_name: the signature input at fault, or None.
      attempts: requests made (1 + retries used).
    """

    operation: str
    model: str
    version: int | None
    signature: str | None
    address: str
    code: str
    message: str
    server_message: str | None = None
    input_name: str | None = None
    http_status: int | None = None
    grpc_code: Any = None
    attempts: int = 1

    def __post_init__(self):
        version = "latest" if self.version is None else self.version
        where = f"model {self.model!r} version {version}"
        if self.signature is not None:
            where += f", signature {self.signature!r}"
        where += f", at {self.address}"
        if self.input_name is not None:
            where += f", input {self.input_name!r}"
        status = self.code
        if self.http_status is not None:
            status += f" (HTTP {self.http_status})"
        if self.attempts > 1:
            status += f" after {self.attempts} attempts"
        super().__init__(f"{self.operation} failed for {where}: {status}: {self.message}")

    def replace(self, **changes) -> ServingError:
        """A copy with some fields changed (keyword arguments as for the constructor)."""
        return dataclasses.replace(self, **changes)

    def __reduce__(self):  # pickling an exception re-calls it with `args` by default
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _rebuild_error, (fields,)


def _rebuild_error(fields: dict) -> ServingError:
    return ServingError(**fields)


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature, from the server's metadata.

    Attributes:
      dtype: numpy dtype (`object` for tf.string; None where numpy has no exact type, e.g.
        bfloat16).
      shape: dims with None for unknown ones (-1), () for a scalar; None for unknown rank.
      name: the graph tensor's name ("serving_default_images:0").
    """

    dtype: np.dtype | None
    shape: tuple[int | None, ...] | None
    name: str = ""


#: {signature: {"inputs": {name: TensorInfo}, "outputs": {name: TensorInfo}}}
Signatures = dict[str, dict[str, dict[str, TensorInfo]]]


class _Failure(Exception):
    """One failed attempt (internal): canonical code, text, transport status."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int | None = None,
        grpc_code: Any = None,
        from_server: bool = True,
        cause: BaseException | None = None,
    ):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status, self.grpc_code = http_status, grpc_code
        self.from_server, self.cause = from_server, cause


class _Rejected(Exception):
    """An input the client cannot send (internal)."""

    def __init__(self, input_name: str, reason: str):
        super().__init__(reason)
        self.input_name, self.reason = input_name, reason


def _np_dtype(dt) -> np.dtype | None:
    return None if dt is None else np.dtype(dt)


def _as_bytes(name: str, index: tuple, x: Any) -> bytes:
    if isinstance(x, bytes | bytearray | memoryview):
        return bytes(x)
    if isinstance(x, str):
        return x.encode("utf-8")
    at = f" at {list(index)}" if index else ""
    raise _Rejected(
        name,
        f"element{at} is a {type(x).__name__}: inputs take numbers, or bytes / str (tf.string)",
    )


def _strings_to_bytes(name: str, arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    for index, x in np.ndenumerate(arr):
        out[index] = _as_bytes(name, index, x)
    return out


def _input_array(name: str, value: Any) -> np.ndarray:
    """One input value -> a numeric numpy array or an object array of `bytes`.

    Raises _Rejected for values that are not a rectangular array of numbers or strings. A
    numpy `bytes_` ('S') array has already lost trailing NUL bytes of its elements (numpy
    strips them): pass binary data as `bytes`, lists or object arrays.
    """
    if not isinstance(value, np.ndarray) and callable(getattr(value, "numpy", None)):
        value = value.numpy()  # tf.Tensor (tf.string -> object array of bytes)
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, str | bytes | bytearray | memoryview):
        arr = np.empty((), dtype=object)
        arr[()] = value
    else:
        try:
            arr = np.asarray(value)
            if arr.dtype.kind in "SUO":  # again, keeping every element as given
                arr = np.asarray(value, dtype=object)
        except (ValueError, TypeError) as e:
            raise _Rejected(name, f"not a rectangular array of numbers or strings ({e})") from e
    kind = arr.dtype.kind
    if kind in "biufc":
        return arr
    if kind == "S":
        return arr.astype(object)
    if kind in "UO":
        return _strings_to_bytes(name, arr)
    raise _Rejected(name, f"cannot send values of dtype {arr.dtype}")


def _conform(name: str, arr: np.ndarray, info: TensorInfo | None) -> np.ndarray:
    """Casts a numeric input to its signature dtype where that keeps the values (float64 ->
    float32, int64 -> int32 when in range, int -> float, bool -> int); else returns it as is
    and lets the server judge."""
    if info is None or info.dtype is None:
        return arr
    target = info.dtype
    if arr.dtype == target or arr.dtype.kind not in "biuf" or target.kind not in "biuf":
        return arr
    if np.can_cast(arr.dtype, target, "same_kind") or (
        arr.dtype.kind in "biu" and target.kind == "f"
    ):
        cast = arr.astype(target)
        if target.kind in "iu" and not np.array_equal(cast, arr):
            raise _Rejected(name, f"values out of the range of the input's dtype {target}")
        return cast
    return arr


def _input_named(message: str) -> str | None:
    """The signature input a server error names, if any."""
    for pattern in _INPUT_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1).strip()
    return None


def _shape_from_json(shape: Mapping | None) -> tuple[int | None, ...] | None:
    shape = shape or {}
    if shape.get("unknown_rank"):
        return None
    dims = [int(d.get("size", 0)) for d in shape.get("dim", [])]
    return tuple(None if d < 0 else d for d in dims)


def _dtype_from_json(dtype: Any) -> np.dtype | None:
    if isinstance(dtype, int):
        return _np_dtype(_DTYPE_BY_ENUM.get(dtype))
    return _np_dtype(_DTYPE_BY_NAME.get(str(dtype)))


def _signatures_from_json(signature_defs: Mapping) -> Signatures:
    """SignatureDefMap.signature_def as JSON (field names as in the .proto) -> Signatures."""
    out: Signatures = {}
    for key, sig in signature_defs.items():
        out[key] = {
            part: {
                name: TensorInfo(
                    _dtype_from_json(t.get("dtype")),
                    _shape_from_json(t.get("tensor_shape")),
                    t.get("name", ""),
                )
                for name, t in (sig.get(part) or {}).items()
            }
            for part in ("inputs", "outputs")
        }
    return out


class _Client:
    """What RestClient and GrpcClient share: validation, metadata cache, retries, errors."""

    protocol = ""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        model: str,
        version: int | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        use_metadata: bool = True,
    ):
        """The connection options both protocols take (see `RestClient` for their meaning)."""
        if not model or not isinstance(model, str):
            raise ValueError(f"model must be a non-empty model name, got {model!r}")
        if version is not None and (isinstance(version, bool) or int(version) != version):
            raise ValueError(f"version must be an integer or None (latest), got {version!r}")
        if version is not None and version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        if int(retries) != retries or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0 seconds, got {backoff_s}")
        self.host, self.port, self.model = host, int(port), model
        self.version = None if version is None else int(version)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), backoff_s
        self.use_metadata = use_metadata
        self._signatures: Signatures | None = None
        self._metadata_unsupported = False

    @property
    def host_port(self) -> str:
        """`host:port`, an IPv6 host in brackets (`[::1]:8500`), as URLs and channels take it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def address(self) -> str:
        """The server, as error messages name it."""
        return f"{self.host_port} ({self.protocol})"

    def __repr__(self) -> str:
        version = "latest" if self.version is None else self.version
        return f"{type(self).__name__}({self.address}, model={self.model!r}, version={version})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Releases the connection (nothing to release for REST)."""

    # Protocol-specific parts.
    def _metadata_once(self, timeout_s: float) -> Signatures:
        raise NotImplementedError

    def _encode(self, arrays: dict[str, np.ndarray], signature: str) -> Any:
        raise NotImplementedError

    def _predict_once(
        self, request: Any, info: Mapping | None, timeout_s: float
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # Shared parts.
    def _error(
        self,
        operation: str,
        signature: str | None,
        *,
        code: str,
        message: str,
        input_name: str | None = None,
        attempts: int = 1,
        failure: _Failure | None = None,
    ) -> ServingError:
        return ServingError(
            operation=operation,
            model=self.model,
            version=self.version,
            signature=signature,
            address=self.address,
            code=code,
            message=message,
            server_message=message if failure is not None and failure.from_server else None,
            input_name=input_name,
            http_status=failure.http_status if failure is not None else None,
            grpc_code=failure.grpc_code if failure is not None else None,
            attempts=attempts,
        )

    def _call(
        self,
        operation: str,
        signature: str | None,
        once: Callable[[float], Any],
        timeout_s: float,
    ):
        """Runs `once(timeout_s)`, retrying UNAVAILABLE with exponential backoff; raises
        ServingError for the last failure."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return once(timeout_s)
            except _Failure as f:
                if f.code == "UNAVAILABLE" and attempt <= self.retries:
                    time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
                    continue
                error = self._error(
                    operation,
                    signature,
                    code=f.code,
                    message=f.message,
                    input_name=_input_named(f.message) if f.from_server else None,
                    attempts=attempt,
                    failure=f,
                )
                raise error from f.cause

    def metadata(self, *, refresh: bool = False, timeout_s: float | None = None) -> Signatures:
        """The served version's signatures (TF Serving's GetModelMetadata, `signature_def`):
        {signature: {"inputs": {name: TensorInfo}, "outputs": {name: TensorInfo}}}.

        Read once and cached for this client (`refresh=True` reads again, e.g. after a newer
        version was loaded for "latest"). Raises ServingError."""
        if self._signatures is None or refresh:
            timeout = self.timeout_s if timeout_s is None else float(timeout_s)
            self._signatures = self._call("GetModelMetadata", None, self._metadata_once, timeout)
        return self._signatures

    def _signature_info(self, signature: str, timeout_s: float) -> Mapping | None:
        """This signature's metadata, or None when not used / not available."""
        if not self.use_metadata or self._metadata_unsupported:
            return None
        try:
            signatures = self.metadata(timeout_s=timeout_s)
        except ServingError as e:
            if e.code in _FATAL_METADATA_CODES:
                # The Predict request would fail the same way: say so as its failure.
                raise e.replace(
                    operation="Predict (reading the model's metadata)", signature=signature
                ) from e.__cause__
            self._metadata_unsupported = e.code == "UNIMPLEMENTED"
            return None
        return signatures.get(signature)

    def predict(
        self,
        inputs: Mapping[str, Any],
        signature: str = DEFAULT_SIGNATURE,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs one signature of the model on the server.

        Args:
          inputs: {signature input name: value}; a value is a numpy array, a `tf.Tensor`, a
            Python number / `bytes` / `str` or a (nested) list of them: images as encoded
            bytes [N] for tf.string inputs, float32 [N, H, W, 3] in [0, 1] for the `_floats`
            signatures, scalars for scalar inputs (e.g. `k`), as the signature declares.
          signature: the SignatureDef key (default "serving_default").
          timeout_s: overrides the client's timeout (seconds, for each attempt).

        Returns:
          {output name: numpy array}, with the shapes the signature returns (e.g. embeddings
          float32 [N, E]); tf.string outputs as object arrays of `bytes`.

        Raises:
          ServingError: the server refused or failed the request, was unavailable after the
            retries, did not answer within the timeout, or an input cannot be sent.
        """
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        if timeout <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout}")
        if not isinstance(inputs, Mapping) or not inputs:
            raise self._error(
                "Predict",
                signature,
                code="INVALID_ARGUMENT",
                message=f"inputs must be a non-empty dict of input name -> value, got "
                f"{type(inputs).__name__}",
            )
        info = self._signature_info(signature, timeout)
        input_info = (info or {}).get("inputs", {})
        try:
            arrays = {}
            for name, value in inputs.items():
                if not isinstance(name, str):
                    raise _Rejected(str(name), "input names must be strings")
                arrays[name] = _conform(name, _input_array(name, value), input_info.get(name))
            request = self._encode(arrays, signature)
        except _Rejected as e:
            raise self._error(
                "Predict",
                signature,
                code="INVALID_ARGUMENT",
                message=f"input `{e.input_name}` rejected by the client: {e.reason}",
                input_name=e.input_name,
            ) from None
        return self._call(
            "Predict",
            signature,
            lambda t: self._predict_once(request, info, t),
            timeout,
        )


# REST ------------------------------------------------------------------------------------


def _to_json_value(name: str, arr: np.ndarray) -> Any:
    """An input array as TF Serving's REST API takes it: nested lists, binary strings as
    {"b64": base64}."""
    if arr.dtype.kind == "c":
        raise _Rejected(name, "complex values have no JSON form in the REST API (use GrpcClient)")
    if arr.dtype.kind != "O":
        return arr.tolist()

    def walk(x):
        if isinstance(x, list):
            return [walk(v) for v in x]
        return {"b64": base64.b64encode(x).decode("ascii")}

    return walk(arr.tolist())


def _from_json_value(value: Any, dtype: np.dtype | None) -> np.ndarray:
    """A REST output value -> numpy array: `dtype` from the metadata, else bytes for strings,
    float32 for floats, int64 for integers, bool for booleans."""

    def is_string(x) -> bool:
        if isinstance(x, list):
            return any(is_string(v) for v in x)
        return isinstance(x, str | dict)

    def leaf(x):
        if isinstance(x, dict):
            if set(x) != {"b64"}:
                raise ValueError(f"unexpected object {sorted(x)} in a tensor")
            return base64.b64decode(x["b64"], validate=True)
        if isinstance(x, str):
            return x.encode("utf-8")
        raise ValueError(f"a {type(x).__name__} in a string tensor")

    def walk(x):
        return [walk(v) for v in x] if isinstance(x, list) else leaf(x)

    if (dtype is not None and dtype.kind == "O") or (dtype is None and is_string(value)):
        nested = walk(value)
        arr = np.array(nested, dtype=object)
        if any(isinstance(x, list) for x in arr.ravel()):
            raise ValueError("ragged string tensor")
        return arr
    if dtype is not None:
        return np.asarray(value, dtype=dtype)
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"not a rectangular numeric tensor (numpy made {arr.dtype})")
    return arr


def _error_text(body: bytes) -> str:
    """The REST error body's message: `{"error": "..."}`, else the text itself."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:2000] or "(empty response)"
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return text[:2000]


class RestClient(_Client):
    """TF Serving's REST API: `POST /v1/models/NAME[/versions/N]:predict` with the columnar
    ("inputs") request format and `signature_name`; standard library only.

    String inputs go as `{"b64": ...}`. Outputs: TF Serving's JSON carries no dtypes, so the
    client takes them from the model's metadata (`GET .../metadata`, read once); without it
    (`use_metadata=False`, or a server without that API) floats come back as float32, integers
    as int64, strings as bytes, and the output of a one-output signature is named "outputs".

    Args:
      host, port: the server's REST API (`--rest_api_port`, 8501 in the README's commands).
      model: the model name (`models.config`'s `name`; the family name for the main job).
      version: an integer version folder, or None for the latest the server has loaded.
      timeout_s: seconds each request may take (connection and reply).
      retries: extra attempts for a request answered UNAVAILABLE (HTTP 503, or no
        connection: refused, reset, unreachable); 0 = one attempt.
      backoff_s: seconds before the first retry, doubled for each next one (at most 30 s).
      use_metadata: read the signatures' dtypes and output names from the server.
      proxies: for `urllib.request.ProxyHandler`: None uses the environment's proxy settings
        (`http_proxy`, `no_proxy`), {} connects directly.
    """

    protocol = "REST"

    def __init__(
        self,
        host: str,
        port: int = 8501,
        *,
        proxies: Mapping[str, str] | None = None,
        **connection,
    ):
        super().__init__(host, port, **connection)
        handlers = [] if proxies is None else [urllib.request.ProxyHandler(dict(proxies))]
        self._opener = urllib.request.build_opener(*handlers)
        self.base_url = f"http://{self.host_port}/v1/models/{urllib.parse.quote(self.model, '')}"
        if self.version is not None:
            self.base_url += f"/versions/{self.version}"

    @property
    def address(self) -> str:
        return f"http://{self.host_port}"

    def _request(self, url: str, body: bytes | None, timeout_s: float) -> dict:
        """One HTTP request; returns the JSON reply, raises _Failure."""
        request = urllib.request.Request(
            url,
            data=body,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=timeout_s) as reply:
                text = reply.read()
        except urllib.error.HTTPError as e:
            with e:
                message = _error_text(e.read())
            code = _HTTP_CODES.get(e.code, "UNKNOWN")
            raise _Failure(code, message, http_status=e.code, cause=e) from e
        except urllib.error.URLError as e:  # no reply: e.reason is the socket error
            raise self._no_reply(e.reason, timeout_s, e) from e
        except (OSError, http.client.HTTPException) as e:  # while reading the reply
            raise self._no_reply(e, timeout_s, e) from e
        try:
            parsed = json.loads(text)
        except ValueError as e:
            raise _Failure("UNKNOWN", f"reply is not JSON: {text[:200]!r}", cause=e) from e
        if not isinstance(parsed, dict):
            raise _Failure("UNKNOWN", f"reply is not a JSON object: {text[:200]!r}")
        return parsed

    @staticmethod
    def _no_reply(reason: Any, timeout_s: float, cause: BaseException) -> _Failure:
        if isinstance(reason, TimeoutError):
            code, message = "DEADLINE_EXCEEDED", f"no reply within the timeout of {timeout_s:g} s"
        elif isinstance(reason, OSError):  # refused, reset, unreachable, unknown host
            code, message = "UNAVAILABLE", f"cannot reach the server: {reason}"
        else:
            code, message = "UNKNOWN", f"request failed: {reason}"
        return _Failure(code, message, from_server=False, cause=cause)

    def _metadata_once(self, timeout_s: float) -> Signatures:
        reply = self._request(f"{self.base_url}/metadata", None, timeout_s)
        try:
            defs = reply["metadata"]["signature_def"]["signature_def"]
            return _signatures_from_json(defs)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise _Failure("UNKNOWN", f"unexpected metadata reply ({e!r})", cause=e) from e

    def _encode(self, arrays: dict[str, np.ndarray], signature: str) -> bytes:
        body = {
            "signature_name": signature,
            "inputs": {name: _to_json_value(name, arr) for name, arr in arrays.items()},
        }
        return json.dumps(body).encode("utf-8")

    def _predict_once(
        self, request: bytes, info: Mapping | None, timeout_s: float
    ) -> dict[str, np.ndarray]:
        reply = self._request(f"{self.base_url}:predict", request, timeout_s)
        if "outputs" not in reply:
            raise _Failure("UNKNOWN", f"reply has no 'outputs' (keys {sorted(reply)})")
        outputs = reply["outputs"]
        output_info = (info or {}).get("outputs", {})
        single = not isinstance(outputs, dict) or (
            set(outputs) == {"b64"} and isinstance(outputs["b64"], str) and "b64" not in output_info
        )
        if single:  # TF Serving leaves out the name of a one-output signature
            name = next(iter(output_info)) if len(output_info) == 1 else "outputs"
            outputs = {name: outputs}
        result = {}
        for name, value in outputs.items():
            dtype = output_info[name].dtype if name in output_info else None
            try:
                result[name] = _from_json_value(value, dtype)
            except (ValueError, TypeError, binascii.Error) as e:
                raise _Failure("UNKNOWN", f"cannot decode output {name!r}: {e}", cause=e) from e
        return result


# gRPC ------------------------------------------------------------------------------------


def _grpc_modules() -> SimpleNamespace:
    """grpc, tensorflow and the TF Serving protos, imported on first use."""
    try:
        import grpc
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            predict_pb2,
            prediction_service_pb2_grpc,
        )
    except ImportError as e:
        raise ImportError(
            f"GrpcClient needs grpcio (it comes with TensorFlow) and the TF Serving protos of "
            f"the tensorflow-serving-api wheel ({e}). Install the wheel without its "
            f"dependencies (they would replace tensorflow-cpu with tensorflow): "
            f"{GRPC_INSTALL_HINT}"
        ) from e
    import tensorflow as tf

    return SimpleNamespace(
        grpc=grpc,
        tf=tf,
        predict_pb2=predict_pb2,
        metadata_pb2=get_model_metadata_pb2,
        service=prediction_service_pb2_grpc,
    )


class GrpcClient(_Client):
    """TF Serving's gRPC API: `tensorflow.serving.PredictionService/Predict`, with the
    `tensorflow-serving-api` protos (imported on construction; ImportError with the install
    command when absent). Inputs go as `tf.make_tensor_proto`, numeric ones cast to the
    signature dtype first (see the module docstring); outputs come back through
    `tf.make_ndarray` with their exact dtypes.

    Args:
      host, port: the server's gRPC port (`--port`, 8500 in the README's commands).
      model, version, timeout_s, retries, backoff_s, use_metadata: as for `RestClient`
        (retried: `StatusCode.UNAVAILABLE`, which includes a refused connection).
      max_message_bytes: the largest request / reply (bytes; gRPC's default is 4 MiB).
      channel_options: more `grpc.insecure_channel` options (they win over the client's:
        message sizes, and reconnection after a failed connection from `backoff_s` on
        instead of gRPC's 1 s, so that the retries see a restarted server), e.g.
        `[("grpc.enable_http_proxy", 0)]` to ignore the environment's `http_proxy`.
    """

    protocol = "gRPC"

    def __init__(
        self,
        host: str,
        port: int = 8500,
        *,
        max_message_bytes: int = 64 << 20,
        channel_options: Sequence[tuple[str, Any]] = (),
        **connection,
    ):
        super().__init__(host, port, **connection)
        self._m = _grpc_modules()
        # gRPC waits 1 s (then longer) before reconnecting after a failed connection: attempts
        # within that time fail at once, so the retries would not see a server come back.
        reconnect_ms = max(10, int(1000 * self.backoff_s))
        options = {
            "grpc.max_send_message_length": int(max_message_bytes),
            "grpc.max_receive_message_length": int(max_message_bytes),
            "grpc.initial_reconnect_backoff_ms": reconnect_ms,
            "grpc.min_reconnect_backoff_ms": reconnect_ms,
            "grpc.max_reconnect_backoff_ms": int(1000 * MAX_BACKOFF_S),
            **dict(channel_options),
        }
        self._channel = self._m.grpc.insecure_channel(self.host_port, options=list(options.items()))
        self._stub = self._m.service.PredictionServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _model_spec(self, spec, signature: str | None) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        if signature is not None:
            spec.signature_name = signature

    def _rpc(self, method, request, timeout_s: float):
        grpc = self._m.grpc
        try:
            return method(request, timeout=timeout_s)
        except grpc.RpcError as e:
            status = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
            details = (e.details() if callable(getattr(e, "details", None)) else str(e)) or ""
            if status == grpc.StatusCode.DEADLINE_EXCEEDED:
                details += f" (timeout {timeout_s:g} s)"
            raise _Failure(status.name, details, grpc_code=status, cause=e) from e

    def _metadata_once(self, timeout_s: float) -> Signatures:
        pb = self._m.metadata_pb2
        request = pb.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, None)
        reply = self._rpc(self._stub.GetModelMetadata, request, timeout_s)
        defs = pb.SignatureDefMap()
        if "signature_def" not in reply.metadata or not reply.metadata["signature_def"].Unpack(
            defs
        ):
            raise _Failure("UNKNOWN", "metadata reply without a SignatureDefMap")
        out: Signatures = {}
        for key, sig in defs.signature_def.items():
            out[key] = {
                part: {
                    name: TensorInfo(
                        _np_dtype(_DTYPE_BY_ENUM.get(t.dtype)),
                        None
                        if t.tensor_shape.unknown_rank
                        else tuple(None if d.size < 0 else d.size for d in t.tensor_shape.dim),
                        t.name,
                    )
                    for name, t in getattr(sig, part).items()
                }
                for part in ("inputs", "outputs")
            }
        return out

    def _encode(self, arrays: dict[str, np.ndarray], signature: str):
        request = self._m.predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for name, arr in arrays.items():
            try:
                proto = self._m.tf.make_tensor_proto(arr)
            except (TypeError, ValueError) as e:
                raise _Rejected(name, f"not convertible to a TensorProto ({e})") from e
            request.inputs[name].CopyFrom(proto)
        return request

    def _predict_once(self, request, info: Mapping | None, timeout_s: float):
        reply = self._rpc(self._stub.Predict, request, timeout_s)
        try:
            return {k: self._m.tf.make_ndarray(v) for k, v in reply.outputs.items()}
        except (TypeError, ValueError) as e:
            raise _Failure("UNKNOWN", f"cannot decode the outputs: {e}", cause=e) from e
