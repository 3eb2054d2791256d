"""CosyVoice2's speaker embedding on Triton's python backend: 16 kHz reference clip -> CAM++ 192-d x-vector.

campplus.onnx from the checkpoint directory through onnxruntime on mean-normalised Kaldi fbank
(voice_triton.cosyvoice2.frontend's SpeakerEncoder). A plain model; a clip shorter than one fbank frame comes back
as INVALID_ARG.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.cosyvoice2.frontend import CAMPPLUS_FILE, SpeakerEncoder
from voice_triton.cosyvoice2.serving import onnx_providers, reference_clip
from voice_triton.params import ModelParams
from voice_triton.plain import PlainModel


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        root = checkpoint_dir(params, "cosyvoice2")
        providers = onnx_providers(params.text("device", "auto"))
        self.encoder = SpeakerEncoder(root / CAMPPLUS_FILE, providers)
        self.log_info(f"loaded {root / CAMPPLUS_FILE} ({providers[0]})")

    def respond(self, request: Any) -> Any:
        clip = reference_clip(request, pb_utils)
        embedding = self.encoder(clip).reshape(1, -1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("prompt_spk_embedding", embedding)])
