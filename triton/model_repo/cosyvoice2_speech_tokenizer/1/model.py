"""CosyVoice2's V2 speech tokenizer on Triton's python backend: 16 kHz reference clip -> speech tokens (25 Hz).

speech_tokenizer_v2.onnx from the checkpoint directory through onnxruntime (voice_triton.cosyvoice2.frontend's
SpeechTokenizer: Whisper-style 128-bin log-mel, the published preprocessing). A plain model; a clip it cannot take
(empty, longer than the tokenizer's 30 s) comes back as INVALID_ARG naming the limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.cosyvoice2.frontend import SPEECH_TOKENIZER_FILE, SpeechTokenizer
from voice_triton.cosyvoice2.serving import onnx_providers, reference_clip
from voice_triton.params import ModelParams
from voice_triton.plain import PlainModel


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        root = checkpoint_dir(params, "cosyvoice2")
        providers = onnx_providers(params.text("device", "auto"))
        self.tokenizer = SpeechTokenizer(root / SPEECH_TOKENIZER_FILE, providers)
        self.log_info(f"loaded {root / SPEECH_TOKENIZER_FILE} ({providers[0]})")

    def respond(self, request: Any) -> Any:
        clip = reference_clip(request, pb_utils)
        tokens = self.tokenizer(clip).astype(np.int32).reshape(1, -1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("prompt_speech_tokens", tokens)])
