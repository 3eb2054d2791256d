"""Spark-TTS audio tokenizer on Triton's python backend: reference audio -> global and semantic tokens.

The model is spark-tts-lib's BiCodecTokenizer (wav2vec2 features mixed from hidden layers 11, 14 and 16, BiCodec's
encoder and speaker encoder) loaded unchanged from a published Spark-TTS checkpoint directory. The clip is volume
normalized as Spark-TTS's own inference does when the checkpoint's config.yaml asks for it; the speaker's global
tokens come from a fixed-length reference segment (ref_segment_duration, the clip repeated when shorter).

A plain (non-decoupled) model, called by spark_tts through BLS once per distinct reference clip; a clip it cannot
take comes back as INVALID_ARG.
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

MIN_SAMPLES = 1600  # 0.1 s at 16 kHz: less gives wav2vec2 no frame to work on


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        import torch
        from spark_tts_lib.models.audio_tokenizer import BiCodecTokenizer

        self.torch = torch
        self.device = pick_device(params.text("device", "auto"))
        root = checkpoint_dir(params, "spark")
        self.tokenizer = BiCodecTokenizer(root, device=self.device)
        self.tokenizer.model.eval()
        self.config = self.tokenizer.config
        self.log_info(f"loaded {root} on {self.device}")

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

    def respond(self, request: Any) -> Any:
        wav = pb_utils.get_input_tensor_by_name(request, "reference_wav").as_numpy().reshape(-1)
        length = int(pb_utils.get_input_tensor_by_name(request, "reference_wav_len").as_numpy().reshape(-1)[0])
        if not MIN_SAMPLES <= length <= wav.size:
            raise RequestError(f"reference_wav_len {length} must be between {MIN_SAMPLES} and {wav.size}")
        clip = np.asarray(wav[:length], dtype=np.float32)
        if not np.isfinite(clip).all():
            raise RequestError("reference_wav holds NaN or infinite samples")
        global_tokens, semantic_tokens = self._tokenize(clip)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("global_tokens", global_tokens),
                pb_utils.Tensor("semantic_tokens", semantic_tokens),
            ]
        )
