"""The Open Inference Protocol v2 on the serving replica: REST routes beside v1, and the gRPC
service `inference.GRPCInferenceService` (serve/proto/grpc_predict_v2.proto) through Ray
Serve's gRPC proxy.

    raylane serve --model digits@production --grpc-port 9000
    curl 127.0.0.1:8000/v2/models/digits/infer -d '{"inputs": [{"name": "input",
         "shape": [1, 64], "datatype": "FP32", "data": [0, 0, 5, ...]}]}'

REST: POST /v2/models/NAME/infer, GET /v2/models/NAME (metadata), GET /v2/models/NAME/ready,
GET /v2 (server metadata), GET /v2/health/live and /v2/health/ready (no API key, like /healthz).
gRPC: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer; Serve's
proxy calls the replica method named like the RPC with the request message and a
`grpc_context`, on which a refusal sets its status code and details (INVALID_ARGUMENT for a bad
tensor, NOT_FOUND for an unknown model, UNAUTHENTICATED without the API key), never leaving it
to Serve, which would answer INTERNAL. The API key is the HTTP one, sent as the metadata
("authorization", "Bearer KEY").

OpenInferenceV2 is mixed into serve.app.ModelServer and uses its predictor, batcher, API key
check and metrics; tensors are decoded and validated by serve/v2.py, the same code for both
protocols, and the rows then take the v1 path (same batches, same Predictor), so all three
protocols give one answer. During a canary rollout (serve/canary.py) a v2 request goes to the
current version or the candidate by the rollout's weight, as a v1 one does, and counts in its
window; a gRPC request that names the candidate's version gets the candidate.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve.http import read_json
from serve.proto import grpc_predict_v2_pb2 as pb
from serve.schemas import RequestError
from serve.v2 import (
    InferRequest,
    check_model,
    grpc_code,
    infer_request_from_grpc,
    infer_request_from_json,
    infer_response_grpc,
    infer_response_json,
    model_metadata,
    rows_from_inputs,
)

router = APIRouter()
logger = logging.getLogger("ray.serve")


class OpenInferenceV2:
    """The v2 REST routes and gRPC methods of serve.app.ModelServer."""

    # ------------------------------------------------------------------ REST

    @router.post("/v2/models/{name}/infer", summary="Open Inference Protocol v2 inference")
    async def v2_infer(self, name: str, request: Request) -> JSONResponse:
        start = time.perf_counter()
        predictor = self.canary.choose(self.predictor, request.headers)  # a rollout's weight
        try:
            self._authorize(request)
            check_model(name, "", served=predictor.name, served_version=predictor.version)
            infer = infer_request_from_json(await read_json(request, self.args.max_body_bytes))
            used, answer = await self._v2_answer(predictor, infer)
            reply = infer_response_json(answer, infer)
            return self._reply(200, reply, used, start, predicted=True)
        except RequestError as error:
            body = {"error": str(error)}
            return self._reply(error.status_code, body, predictor, start, predicted=True)
        except Exception as error:
            return self._reply(500, self._v2_internal(error), predictor, start, predicted=True)

    @router.get("/v2/models/{name}", summary="v2 model metadata")
    async def v2_metadata(self, name: str, request: Request) -> JSONResponse:
        start, predictor, refused = self._v2_model(name, request)
        return refused or self._reply(200, self._v2_metadata(predictor), predictor, start)

    @router.get("/v2/models/{name}/ready", summary="v2 model readiness")
    async def v2_model_ready(self, name: str, request: Request) -> JSONResponse:
        start, predictor, refused = self._v2_model(name, request)
        return refused or self._reply(200, {"name": name, "ready": True}, predictor, start)

    def _v2_model(self, name: str, request: Request):
        """(start, predictor, refusal): the refusal is the reply to send when the caller may
        not see `name` (no API key, another model), else None."""
        start, predictor = time.perf_counter(), self.predictor
        try:
            self._authorize(request)
            check_model(name, "", served=predictor.name, served_version=predictor.version)
        except RequestError as error:
            refusal = self._reply(error.status_code, {"error": str(error)}, predictor, start)
            return start, predictor, refusal
        return start, predictor, None

    @router.get("/v2", summary="v2 server metadata")
    async def v2_server(self) -> dict:
        return {"name": "raylane", "version": "1", "extensions": []}

    @router.get("/v2/health/live", summary="v2 liveness")
    async def v2_live(self) -> dict:
        return {"live": True}

    @router.get("/v2/health/ready", summary="v2 readiness: the model is loaded")
    async def v2_ready(self) -> dict:
        return {"ready": self.predictor is not None}

    # ------------------------------------------------------------------ gRPC

    async def ServerLive(self, request, grpc_context=None) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context=None) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.predictor is not None)

    async def ServerMetadata(self, request, grpc_context=None):  # noqa: N802
        return pb.ServerMetadataResponse(name="raylane", version="1")

    async def ModelReady(self, request, grpc_context=None) -> pb.ModelReadyResponse:  # noqa: N802
        try:
            self._v2_grpc_check(grpc_context, request.name, request.version)
        except RequestError as error:
            return self._v2_grpc_refuse(grpc_context, error, pb.ModelReadyResponse())
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, grpc_context=None):  # noqa: N802
        try:
            predictor = self._v2_grpc_check(grpc_context, request.name, request.version)
        except RequestError as error:
            return self._v2_grpc_refuse(grpc_context, error, pb.ModelMetadataResponse())
        return pb.ModelMetadataResponse(**self._v2_metadata(predictor))

    async def ModelInfer(self, request, grpc_context=None) -> pb.ModelInferResponse:  # noqa: N802
        start, predictor = time.perf_counter(), self.predictor
        try:
            predictor = self._v2_grpc_check(grpc_context, request.model_name, request.model_version)
            if request.ByteSize() > self.args.max_body_bytes:
                raise RequestError(
                    413, f"the request is larger than {self.args.max_body_bytes} bytes "
                    "(max_body_bytes); send fewer rows",
                )  # fmt: skip
            infer = infer_request_from_grpc(request)
            used, answer = await self._v2_answer(predictor, infer)
            response = infer_response_grpc(answer, infer)
            self._record(200, used, start, predicted=True)
            return response
        except RequestError as error:
            self._record(error.status_code, predictor, start, predicted=True)
            return self._v2_grpc_refuse(grpc_context, error, pb.ModelInferResponse())
        except Exception as error:
            self._record(500, predictor, start, predicted=True)
            message = self._v2_internal(error)["error"]
            return self._v2_grpc_refuse(grpc_context, RequestError(500, message), None)

    # ------------------------------------------------------------------ shared

    async def _v2_answer(self, predictor, infer: InferRequest) -> tuple:
        """Tensors -> rows -> the batcher, as v1 predict does -> (predictor used, answer)."""
        rows = rows_from_inputs(
            predictor.schema, infer.inputs, max_instances=self.args.max_instances
        )
        self.canary.inject_fault(predictor)  # tests only: $RAYLANE_TEST_FAULTS
        used, prediction = await self.batcher.submit((predictor, rows))
        return used, used.response(prediction)

    def _v2_metadata(self, predictor) -> dict:
        return model_metadata(
            name=predictor.name, version=predictor.version, schema=predictor.schema
        )

    def _v2_internal(self, error: Exception) -> dict:
        logger.exception(f"v2 inference failed on replica {self.replica}")
        return {"error": f"internal error ({type(error).__name__}); it is logged on the replica"}

    def _v2_grpc_check(self, grpc_context, name: str, version: str):
        """The API key from the metadata, then the predictor that answers: the version asked
        for (the current one or a rollout's candidate), else the rollout's choice."""
        metadata = dict(grpc_context.invocation_metadata()) if grpc_context else {}
        try:
            self._check_api_key(metadata.get("authorization", ""))
        except RequestError:
            raise RequestError(
                401, "missing or wrong API key: send the metadata ('authorization', 'Bearer KEY')"
            ) from None
        current, candidate = self.predictor, self.canary.candidate
        if candidate is not None and (name, version) == (candidate.name, str(candidate.version)):
            return candidate
        predictor = current if version else self.canary.choose(current, metadata)
        check_model(name, version, served=predictor.name, served_version=predictor.version)
        return predictor

    @staticmethod
    def _v2_grpc_refuse(grpc_context, error: RequestError, empty):
        """Set the status on the context (Serve's proxy sends it); return an empty message."""
        if grpc_context is not None:
            grpc_context.set_code(grpc_code(error.status_code))
            grpc_context.set_details(str(error))
        return empty if empty is not None else pb.ModelInferResponse()
