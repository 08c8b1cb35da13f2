"""A stand-in for `tensorflow_model_server` in the tests (the binary cannot be installed here).

`ModelServer({name: export_base, ...})` loads every integer version folder
`<export_base>/<version>/saved_model.pb` the way TF Serving runs a SavedModel: the TF1 session
loader (tag "serve"), one session per version kept open, inputs fed and outputs fetched by the
SignatureDefs' tensor names (as `sketch_tf.export.serving.session_outputs` does once). It
serves all of them, "latest" being the highest version, over

- REST (`http.server`, threaded): `POST /v1/models/M[/versions/N]:predict` in the columnar
  ("inputs") format, `GET /v1/models/M[/versions/N]/metadata` and `GET /v1/models/M[...]`
  (status); errors as `{"error": "..."}` with HTTP 400 for INVALID_ARGUMENT, 404 for
  NOT_FOUND (unknown model, version or signature), 503 for UNAVAILABLE;
- gRPC (`grpc.server`): `tensorflow.serving.PredictionService` Predict and GetModelMetadata
  with the tensorflow_serving protos (only when they are installed), with status codes
  INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE.

Both listen on 127.0.0.1, ephemeral ports by default (`rest_port`, `grpc_port` once started).
Use it as a context manager (`with ModelServer(...) as server:`), e.g. from a module-scoped
fixture. `unavailable(n)` answers the next n requests (either protocol, any method)
UNAVAILABLE, `delay(seconds)` holds every Predict for that long, `log` records each request.

Where it differs from TF Serving: all versions are served (TF Serving's `models.config` of
the export serves only the newest); an unknown signature is NOT_FOUND (TF Serving itself
answers FAILED_PRECONDITION, also HTTP 400); no row ("instances") format, no batching, no
classify / regress; string outputs are plain JSON strings when valid UTF-8, else (and for
outputs named `*_bytes`) `{"b64": ...}`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

DEFAULT_SIGNATURE = "serving_default"
_CODE_NAMES = {
    getattr(tf.errors, name): name
    for name in (
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    )
}
#: Canonical code -> HTTP status of TF Serving's REST API.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_ROUTE = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:\w+|/metadata)?$"
)


class Status(Exception):
    """A failed request: canonical code name ("INVALID_ARGUMENT", ...) and message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _grpc_modules():
    """grpc and the tensorflow_serving protos, or None when the protos are not installed."""
    try:
        import grpc
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            predict_pb2,
            prediction_service_pb2_grpc,
        )
    except ImportError:
        return None
    return grpc, predict_pb2, get_model_metadata_pb2, prediction_service_pb2_grpc


class LoadedVersion:
    """One SavedModel version in its own graph and TF1 session, kept open."""

    def __init__(self, path: str):
        self.path = path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signatures = dict(meta.signature_def)

    def signature(self, key: str):
        if key not in self.signatures:
            raise Status("NOT_FOUND", f'Serving signature key "{key}" not found.')
        return self.signatures[key]

    def run(
        self, key: str, feeds: Mapping[str, np.ndarray], output_filter=()
    ) -> dict[str, np.ndarray]:
        """Runs signature `key` like TF Serving: the request must give exactly its inputs."""
        sig = self.signature(key)
        sent, wanted = set(feeds), set(sig.inputs)
        if sent != wanted:
            raise Status(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.",
            )
        names = list(output_filter) or list(sig.outputs)
        unknown = [n for n in names if n not in sig.outputs]
        if unknown:
            raise Status(
                "INVALID_ARGUMENT", f"output tensor alias not found in signature: {unknown}"
            )
        feed = {sig.inputs[k].name: v for k, v in feeds.items()}
        fetch = {k: sig.outputs[k].name for k in names}
        try:
            return self.session.run(fetch, feed)
        except tf.errors.OpError as e:
            raise Status(_CODE_NAMES.get(e.error_code, "UNKNOWN"), e.message) from e
        except (ValueError, TypeError) as e:  # e.g. a feed of the wrong shape
            raise Status("INVALID_ARGUMENT", str(e)) from e
        except RuntimeError as e:  # the session was closed by ModelServer.stop
            raise Status("UNAVAILABLE", f"the model server is shutting down ({e})") from e

    def close(self) -> None:
        self.session.close()


def _json_input(name: str, value: Any, dtype: tf.DType) -> np.ndarray:
    """A REST input value -> numpy array of the signature's dtype."""

    def fail(detail: str):
        raise Status(
            "INVALID_ARGUMENT",
            f"Failed to process element: 0 key: {name} of 'inputs' list. Error: {detail}",
        )

    if dtype == tf.string:

        def walk(x):
            if isinstance(x, list):
                return [walk(v) for v in x]
            if isinstance(x, dict) and set(x) == {"b64"} and isinstance(x["b64"], str):
                try:
                    return base64.b64decode(x["b64"], validate=True)
                except binascii.Error:
                    fail("Unable to base64 decode")
            if isinstance(x, str):
                return x.encode("utf-8")
            fail(f"JSON Value: {json.dumps(x)} not formatted correctly for base64 data")

        arr = np.array(walk(value), dtype=object)
        if any(isinstance(x, list) for x in arr.ravel()):
            fail("ragged string tensor")
        return arr
    try:
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError) as e:
        fail(f"JSON Value: {json.dumps(value)[:100]} is not a {dtype.name} tensor ({e})")


def _json_output(name: str, arr: np.ndarray) -> Any:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "OS":
        return arr.tolist()

    def leaf(b: bytes):
        if not name.endswith("_bytes"):
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(b).decode("ascii")}

    def walk(x):
        return [walk(v) for v in x] if isinstance(x, list) else leaf(x)

    return walk(arr.tolist())


class ModelServer:
    """Serves SavedModel versions over REST and gRPC (see the module docstring).

    Args:
      models: {model name: export base folder with integer version folders}.
      host: address to listen on (127.0.0.1).
      rest_port, grpc_port: 0 = ephemeral ports.
      grpc: also start the gRPC server (when the tensorflow_serving protos are installed).
    """

    def __init__(
        self,
        models: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        rest_port: int = 0,
        grpc_port: int = 0,
        grpc: bool = True,
    ):
        self.model_paths = dict(models)
        self.host = host
        self._ports = (rest_port, grpc_port)
        self._want_grpc = grpc
        self.models: dict[str, dict[int, LoadedVersion]] = {}
        self.rest_port: int | None = None
        self.grpc_port: int | None = None
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._unavailable_left = 0
        self._delay_s = 0.0
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd = None
        self._http_thread = None
        self._grpc_server = None

    # Loading and lifetime.
    def start(self) -> ModelServer:
        self._stopping.clear()
        for name, base in self.model_paths.items():
            versions = sorted(
                int(v)
                for v in os.listdir(base)
                if v.isdigit() and os.path.isfile(os.path.join(base, v, "saved_model.pb"))
            )
            if not versions:
                raise FileNotFoundError(f"{base}: no <version>/saved_model.pb for model {name!r}")
            self.models[name] = {v: LoadedVersion(os.path.join(base, str(v))) for v in versions}
        self._httpd = ThreadingHTTPServer((self.host, self._ports[0]), _RestHandler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.model_server = self
        self.rest_port = self._httpd.server_address[1]
        self._http_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._http_thread.start()
        modules = _grpc_modules() if self._want_grpc else None
        if modules is not None:
            from concurrent import futures

            grpc, _, _, service = modules
            self._grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            service.add_PredictionServiceServicer_to_server(_Servicer(self), self._grpc_server)
            self.grpc_port = self._grpc_server.add_insecure_port(f"{self.host}:{self._ports[1]}")
            self._grpc_server.start()
        return self

    def stop(self) -> None:
        """Stops both servers; requests still running (e.g. held by `delay`) are answered
        UNAVAILABLE, and the sessions are closed once none is left (5 s at most)."""
        self._stopping.set()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait(5)
            self._grpc_server = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._http_thread.join(5)
            self._httpd = None
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=5)
        for versions in self.models.values():
            for loaded in versions.values():
                loaded.close()
        self.models = {}

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def grpc_enabled(self) -> bool:
        return self.grpc_port is not None

    # Simulated trouble.
    @contextlib.contextmanager
    def unavailable(self, n: int):
        """Answers the next `n` requests UNAVAILABLE (REST 503, gRPC UNAVAILABLE)."""
        with self._lock:
            self._unavailable_left = int(n)
        try:
            yield self
        finally:
            with self._lock:
                self._unavailable_left = 0

    @contextlib.contextmanager
    def delay(self, seconds: float):
        """Holds every Predict request `seconds` before running it."""
        self._delay_s = float(seconds)
        try:
            yield self
        finally:
            self._delay_s = 0.0

    def _admit(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise Status("UNAVAILABLE", "the model server is shutting down")
            if self._unavailable_left > 0:
                self._unavailable_left -= 1
                raise Status("UNAVAILABLE", "the model server is not ready (simulated)")

    @contextlib.contextmanager
    def _request(self):
        """Counts a request in flight (`stop` waits for them before closing sessions)."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    # Requests.
    def servable(self, model: str, version: int | None) -> tuple[int, LoadedVersion]:
        versions = self.models.get(model, {})
        chosen = max(versions, default=None) if version is None else version
        if chosen not in versions:
            what = f"Latest({model})" if version is None else f"Specific({model}, {version})"
            raise Status("NOT_FOUND", f"Servable not found for request: {what}")
        return chosen, versions[chosen]

    def predict(
        self,
        model: str,
        version: int | None,
        signature: str,
        feeds: Mapping[str, np.ndarray],
        output_filter=(),
    ):
        """Returns (version, outputs); raises Status."""
        with self._request():
            number, loaded = self.servable(model, version)
            if self._delay_s and self._stopping.wait(self._delay_s):
                raise Status("UNAVAILABLE", "the model server is shutting down")
            return number, loaded.run(signature, feeds, output_filter)

    def record(self, protocol: str, method: str, code: str) -> None:
        self.log.append({"protocol": protocol, "method": method, "code": code})

    def count(self, protocol: str | None = None, method: str | None = None) -> int:
        """Requests logged so far (of one protocol / method)."""
        return sum(
            1
            for e in list(self.log)
            if (protocol is None or e["protocol"] == protocol)
            and (method is None or e["method"] == method)
        )


class _RestHandler(BaseHTTPRequestHandler):
    server_version = "SketchTfTestModelServer/1"

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout)

    def _handle(self, method: str) -> None:
        server: ModelServer = self.server.model_server
        kind = "unknown"
        try:
            match = _ROUTE.match(self.path.split("?")[0])
            if match is None:
                raise Status("NOT_FOUND", f"Malformed request: {method} {self.path}")
            model = match["model"]
            version = None if match["version"] is None else int(match["version"])
            verb = match["verb"]
            if method == "POST" and verb == ":predict":
                kind = "Predict"
                server._admit()
                body = self._body()
                reply = self._predict(server, model, version, body)
            elif method == "GET" and verb == "/metadata":
                kind = "GetModelMetadata"
                server._admit()
                reply = self._metadata(server, model, version)
            elif method == "GET" and verb is None:
                kind = "GetModelStatus"
                server._admit()
                reply = self._status(server, model, version)
            else:
                raise Status("UNIMPLEMENTED", f"the test server has no {method} {self.path}")
        except Status as s:
            server.record("REST", kind, s.code)
            self._reply(HTTP_STATUS.get(s.code, 500), {"error": s.message})
            return
        except Exception as e:  # a bug of the test server: say so in the reply
            server.record("REST", kind, "INTERNAL")
            self._reply(500, {"error": f"test server error: {type(e).__name__}: {e}"})
            return
        server.record("REST", kind, "OK")
        self._reply(200, reply)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise Status("INVALID_ARGUMENT", f"JSON Parse error: {e}") from e
        if not isinstance(body, dict):
            raise Status("INVALID_ARGUMENT", "JSON Parse error: the request is not an object")
        return body

    @staticmethod
    def _predict(server: ModelServer, model, version, body: dict) -> dict:
        if "instances" in body:
            raise Status("INVALID_ARGUMENT", "the test server takes only the 'inputs' format")
        if "inputs" not in body:
            raise Status("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        signature = body.get("signature_name") or DEFAULT_SIGNATURE
        _, loaded = server.servable(model, version)
        sig = loaded.signature(signature)
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or set(inputs) == {"b64"}:
            if len(sig.inputs) != 1:  # one unnamed value: only for one-input signatures
                raise Status(
                    "INVALID_ARGUMENT",
                    f"'inputs' is a single tensor but signature {signature} has "
                    f"{len(sig.inputs)} inputs",
                )
            inputs = {next(iter(sig.inputs)): inputs}
        feeds = {}
        for name, value in inputs.items():
            if name in sig.inputs:
                feeds[name] = _json_input(name, value, tf.as_dtype(sig.inputs[name].dtype))
            else:
                feeds[name] = np.asarray(0)  # reported as extra by LoadedVersion.run
        _, outputs = server.predict(model, version, signature, feeds)
        encoded = {name: _json_output(name, value) for name, value in outputs.items()}
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}

    @staticmethod
    def _metadata(server: ModelServer, model, version) -> dict:
        number, loaded = server.servable(model, version)
        defs = {
            key: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for key, sig in loaded.signatures.items()
        }
        return {
            "model_spec": {"name": model, "signature_name": "", "version": str(number)},
            "metadata": {"signature_def": {"signature_def": defs}},
        }

    @staticmethod
    def _status(server: ModelServer, model, version) -> dict:
        if version is not None:
            server.servable(model, version)
            versions = [version]
        else:
            server.servable(model, None)
            versions = sorted(server.models[model], reverse=True)
        ok = {"error_code": "OK", "error_message": ""}
        return {
            "model_version_status": [
                {"version": str(v), "state": "AVAILABLE", "status": ok} for v in versions
            ]
        }


def _servicer_base():
    modules = _grpc_modules()
    return object if modules is None else modules[3].PredictionServiceServicer


class _Servicer(_servicer_base()):
    """PredictionService: Predict and GetModelMetadata (the rest stays UNIMPLEMENTED)."""

    def __init__(self, server: ModelServer):
        self.server = server
        self.grpc, self.predict_pb2, self.metadata_pb2, _ = _grpc_modules()

    def _abort(self, context, method: str, status: Status):
        self.server.record("gRPC", method, status.code)
        context.abort(getattr(self.grpc.StatusCode, status.code), status.message)

    @staticmethod
    def _spec(spec) -> tuple[str, int | None]:
        return spec.name, (spec.version.value if spec.HasField("version") else None)

    def Predict(self, request, context):  # noqa: N802 - the proto's method name
        try:
            self.server._admit()
            model, version = self._spec(request.model_spec)
            signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
            _, loaded = self.server.servable(model, version)
            sig = loaded.signature(signature)
            feeds = {}
            for i, (name, proto) in enumerate(sorted(request.inputs.items())):
                if name in sig.inputs and proto.dtype != sig.inputs[name].dtype:
                    want = tf.as_dtype(sig.inputs[name].dtype).name
                    raise Status(
                        "INVALID_ARGUMENT",
                        f"Expects arg[{i}] to be {want} but {tf.as_dtype(proto.dtype).name} "
                        f"is provided",
                    )
                try:
                    feeds[name] = tf.make_ndarray(proto)
                except (TypeError, ValueError) as e:
                    raise Status("INVALID_ARGUMENT", f"input {name}: bad TensorProto: {e}") from e
            number, outputs = self.server.predict(
                model, version, signature, feeds, list(request.output_filter)
            )
        except Status as s:
            self._abort(context, "Predict", s)
        reply = self.predict_pb2.PredictResponse()
        reply.model_spec.name = model
        reply.model_spec.version.value = number
        reply.model_spec.signature_name = signature
        for name, value in outputs.items():
            reply.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        self.server.record("gRPC", "Predict", "OK")
        return reply

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            self.server._admit()
            model, version = self._spec(request.model_spec)
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise Status("INVALID_ARGUMENT", f"Metadata field(s) {fields} not supported")
            number, loaded = self.server.servable(model, version)
        except Status as s:
            self._abort(context, "GetModelMetadata", s)
        defs = self.metadata_pb2.SignatureDefMap()
        for key, sig in loaded.signatures.items():
            defs.signature_def[key].CopyFrom(sig)
        reply = self.metadata_pb2.GetModelMetadataResponse()
        reply.model_spec.name = model
        reply.model_spec.version.value = number
        reply.metadata["signature_def"].Pack(defs)
        self.server.record("gRPC", "GetModelMetadata", "OK")
        return reply
