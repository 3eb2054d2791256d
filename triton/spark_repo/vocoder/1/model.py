"""Spark-TTS vocoder on Triton's python backend: BiCodec's detokenizer, global + semantic tokens -> 16 kHz audio.

spark-tts-lib's BiCodec loaded unchanged from the checkpoint's BiCodec/ directory. Every semantic token becomes
exactly `latent_hop_length` (320) samples, which the streaming orchestrator relies on to cross-fade chunks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def checkpoint_dir(params: dict[str, str]) -> Path:
    """The checkpoint named by the model config, else by SPARK_TTS_CHECKPOINT; it must exist."""
    path = params.get("checkpoint_dir", "").strip() or os.environ.get("SPARK_TTS_CHECKPOINT", "")
    if not path or not Path(path, "BiCodec", "config.yaml").is_file():
        raise pb_utils.TritonModelException(
            f"no Spark-TTS checkpoint at {path!r}: set parameter checkpoint_dir (triton/launch.py --spark-checkpoint)"
        )
    return Path(path)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from spark_tts_lib.models.bicodec import BiCodec

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        device = params.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.torch = torch
        root = checkpoint_dir(params)
        self.model = BiCodec.load_from_checkpoint(root / "BiCodec").to(self.device).eval()
        codes = self.model.quantizer.codebook_size
        self.semantic_codes = int(codes)
        pb_utils.Logger.log_info(f"vocoder: loaded {root / 'BiCodec'} on {self.device}")

    def execute(self, requests: list[Any]) -> list[Any]:
        torch = self.torch
        responses = []
        for request in requests:
            global_tokens = pb_utils.get_input_tensor_by_name(request, "global_tokens").as_numpy().reshape(1, 1, -1)
            semantic = pb_utils.get_input_tensor_by_name(request, "semantic_tokens").as_numpy().reshape(1, -1)
            if semantic.size == 0 or semantic.min() < 0 or semantic.max() >= self.semantic_codes:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            f"semantic_tokens must be 1 or more codes in 0..{self.semantic_codes - 1}"
                        )
                    )
                )
                continue
            with torch.inference_mode():
                wav = self.model.detokenize(
                    torch.from_numpy(semantic.astype(np.int64)).to(self.device),
                    torch.from_numpy(global_tokens.astype(np.int64)).to(self.device),
                )
            waveform = wav.reshape(1, -1).float().cpu().numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("waveform", waveform)]))
        return responses
