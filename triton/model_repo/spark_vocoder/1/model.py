"""Spark-TTS vocoder on Triton's python backend: BiCodec's detokenizer, global + semantic tokens -> 16 kHz audio.

spark-tts-lib's BiCodec loaded unchanged from the checkpoint's BiCodec/ directory. Every semantic token becomes
exactly `latent_hop_length` (320) samples, which the streaming orchestrator (spark_tts, through BLS) relies on to
cross-fade chunks. A plain (non-decoupled) model; codes outside the codebook come back as INVALID_ARG.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from voice_triton.checkpoint import checkpoint_dir
from voice_triton.device import pick_device
from voice_triton.errors import RequestError
from voice_triton.params import ModelParams
from voice_triton.plain import PlainModel


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        import torch
        from spark_tts_lib.models.bicodec import BiCodec

        self.torch = torch
        self.device = pick_device(params.text("device", "auto"))
        root = checkpoint_dir(params, "spark")
        self.model = BiCodec.load_from_checkpoint(root / "BiCodec").to(self.device).eval()
        self.semantic_codes = int(self.model.quantizer.codebook_size)
        self.log_info(f"loaded {root / 'BiCodec'} on {self.device}")

    def respond(self, request: Any) -> Any:
        torch = self.torch
        global_tokens = pb_utils.get_input_tensor_by_name(request, "global_tokens").as_numpy().reshape(1, 1, -1)
        semantic = pb_utils.get_input_tensor_by_name(request, "semantic_tokens").as_numpy().reshape(1, -1)
        if semantic.size == 0 or semantic.min() < 0 or semantic.max() >= self.semantic_codes:
            raise RequestError(f"semantic_tokens must be 1 or more codes in 0..{self.semantic_codes - 1}")
        with torch.inference_mode():
            wav = self.model.detokenize(
                torch.from_numpy(semantic.astype(np.int64)).to(self.device),
                torch.from_numpy(global_tokens.astype(np.int64)).to(self.device),
            )
        waveform = wav.reshape(1, -1).float().cpu().numpy()
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("waveform", waveform)])
