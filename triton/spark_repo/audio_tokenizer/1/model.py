"""Spark-TTS audio tokenizer on Triton's python backend: reference audio -> global and semantic tokens.

The model is spark-tts-lib's BiCodecTokenizer (wav2vec2 features mixed from hidden layers 11, 14 and 16, BiCodec's
encoder and speaker encoder) loaded unchanged from a published Spark-TTS checkpoint directory. The clip is volume
normalized as Spark-TTS's own inference does when the checkpoint's config.yaml asks for it; the speaker's global
tokens come from a fixed-length reference segment (ref_segment_duration, the clip repeated when shorter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

MIN_SAMPLES = 1600  # 0.1 s at 16 kHz: less gives wav2vec2 no frame to work on


def checkpoint_dir(params: dict[str, str]) -> Path:
    """The checkpoint named by the model config, else by SPARK_TTS_CHECKPOINT; it must exist."""
    path = params.get("checkpoint_dir", "").strip() or os.environ.get("SPARK_TTS_CHECKPOINT", "")
    if not path or not Path(path, "config.yaml").is_file():
        raise pb_utils.TritonModelException(
            f"no Spark-TTS checkpoint at {path!r}: set parameter checkpoint_dir (triton/launch.py --spark-checkpoint)"
        )
    return Path(path)


def pick_device(name: str) -> Any:
    import torch

    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from spark_tts_lib.models.audio_tokenizer import BiCodecTokenizer

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.torch = torch
        self.device = pick_device(params.get("device", "auto"))
        root = checkpoint_dir(params)
        self.tokenizer = BiCodecTokenizer(root, device=self.device)
        self.tokenizer.model.eval()
        self.config = self.tokenizer.config
        pb_utils.Logger.log_info(f"audio_tokenizer: loaded {root} on {self.device}")

    def _tokenize(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from spark_tts_lib.utils.audio import audio_volume_normalize

        if self.config.get("volume_normalize", False):
            wav = audio_volume_normalize(wav.astype(np.float64)).astype(np.float32)
        reference = self.tokenizer.get_ref_clip(wav)
        with self.torch.inference_mode():
            features = self.tokenizer.extract_wav2vec2_features([wav])
            semantic, global_ = self.tokenizer.model.tokenize(
                {
                    "ref_wav": self.torch.from_numpy(np.ascontiguousarray(reference)).unsqueeze(0).to(self.device),
                    "feat": features.to(self.device),
                }
            )
        return (
            global_.reshape(1, -1).to(self.torch.int32).cpu().numpy(),
            semantic.reshape(1, -1).to(self.torch.int32).cpu().numpy(),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                wav = pb_utils.get_input_tensor_by_name(request, "reference_wav").as_numpy().reshape(-1)
                length = int(pb_utils.get_input_tensor_by_name(request, "reference_wav_len").as_numpy().reshape(-1)[0])
                if not MIN_SAMPLES <= length <= wav.size:
                    raise ValueError(f"reference_wav_len {length} must be between {MIN_SAMPLES} and {wav.size}")
                clip = np.asarray(wav[:length], dtype=np.float32)
                if not np.isfinite(clip).all():
                    raise ValueError("reference_wav holds NaN or infinite samples")
                global_tokens, semantic_tokens = self._tokenize(clip)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("global_tokens", global_tokens),
                            pb_utils.Tensor("semantic_tokens", semantic_tokens),
                        ]
                    )
                )
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
