"""A plain (non-decoupled) python-backend model: one response per request, answered in `execute` itself.

A subclass implements `setup(params)` (load weights, read parameters) and `respond(request)` (the request's
InferenceResponse; raise RequestError for a request it cannot take, which goes back as INVALID_ARG without failing
the other requests of the batch). Other exceptions propagate: Triton fails the batch with their message.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from voice_triton.errors import RequestError, error_response
from voice_triton.params import ModelParams


class PlainModel:
    """Base of the plain models (initialize/execute as Triton calls them)."""

    model_name: str
    params: ModelParams

    def initialize(self, args: dict[str, str]) -> None:
        self.params = ModelParams.from_args(args)
        self.model_name = self.params.model_name
        self.setup(self.params)

    def setup(self, params: ModelParams) -> None:
        raise NotImplementedError

    def respond(self, request: Any) -> Any:
        raise NotImplementedError

    def log_info(self, message: str) -> None:
        pb_utils.Logger.log_info(f"{self.model_name}: {message}")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(self.respond(request))
            except RequestError as exc:
                responses.append(error_response(exc))
        return responses
