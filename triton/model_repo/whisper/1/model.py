"""Whisper speech recognition on Triton's python backend: WhisperForConditionalGeneration + WhisperProcessor.

Loads a checkpoint directory in the published layout (openai/whisper-*: config.json, generation_config.json,
preprocessor_config.json, the tokenizer files, model.safetensors) with transformers, on CPU or GPU. Audio longer
than 30 s is cut into 30 s windows, each decoded on its own (greedy), the transcripts joined and word timings offset
by the window's start. A request's language is forced (`<|xx|>` in the decoder prompt); without one, Whisper's own
language detection runs on the first window and that language is used for all windows and returned. Word timings
come from the cross-attention alignment of the generation config's `alignment_heads` (transformers'
`return_token_timestamps`, dynamic time warping); confidence is the mean probability of the chosen tokens.
A plain (non-decoupled) model; bad requests come back as INVALID_ARG (voice_triton.asr).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voice_triton.asr import AsrRequest, AsrSettings, Word, mean_probability, read_request, response, words_from_pieces
from voice_triton.checkpoint import checkpoint_dir
from voice_triton.device import pick_device, pick_dtype
from voice_triton.params import ConfigError, ModelParams
from voice_triton.plain import PlainModel

WINDOW_S = 30


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.torch = torch
        self.device = pick_device(params.text("device", "auto"))
        self.dtype = pick_dtype(params.text("dtype", "auto"), self.device)
        root = checkpoint_dir(params, "whisper")
        self.processor = WhisperProcessor.from_pretrained(root)
        self.model = WhisperForConditionalGeneration.from_pretrained(root, dtype=self.dtype).to(self.device).eval()
        generation = self.model.generation_config
        lang_to_id = getattr(generation, "lang_to_id", None) or {}
        if not lang_to_id:
            raise ConfigError(f"{self.model_name}: {root}/generation_config.json has no lang_to_id (not multilingual)")
        # In token-id order (English first), as the published tokenizer numbers them.
        self.id_to_lang = {
            token_id: token.strip("<|>") for token, token_id in sorted(lang_to_id.items(), key=lambda x: x[1])
        }
        self.settings = AsrSettings.from_params(params, list(self.id_to_lang.values()), strict=False)
        self.timings = self.settings.word_time_offsets and bool(getattr(generation, "alignment_heads", None))
        self.max_new_tokens = params.integer("max_new_tokens", 440, 1, 444)
        self.eos = int(
            generation.eos_token_id if isinstance(generation.eos_token_id, int) else generation.eos_token_id[0]
        )
        self.sample_rate = self.processor.feature_extractor.sampling_rate
        self.log_info(f"loaded {root} on {self.device} ({self.dtype}), {len(self.id_to_lang)} languages")

    def respond(self, request: Any) -> Any:
        asr = read_request(request, self.settings)
        return response(*self.transcribe(asr))

    def transcribe(self, asr: AsrRequest) -> tuple[str, list[Word], str, float]:
        window = WINDOW_S * self.sample_rate
        language = asr.language
        texts: list[str] = []
        words: list[Word] = []
        probs: list[float] = []
        for offset in range(0, asr.audio.size, window):
            features = self.features(asr.audio[offset : offset + window])
            if not language:
                with self.torch.inference_mode():
                    detected = self.model.detect_language(features["input_features"])
                language = self.id_to_lang.get(int(detected[0]), self.settings.languages[0])
            text, window_words, window_probs = self.decode(
                features, language, asr.word_timestamps, offset / self.sample_rate, asr.audio.size / self.sample_rate
            )
            texts.append(text)
            words.extend(window_words)
            probs.extend(window_probs)
        transcript = " ".join(t for t in texts if t)
        return transcript, words, language, mean_probability(probs)

    def features(self, audio: np.ndarray) -> dict[str, Any]:
        extracted = self.processor.feature_extractor(
            audio, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True
        )
        return {
            "input_features": extracted["input_features"].to(self.device, self.dtype),
            "attention_mask": extracted["attention_mask"].to(self.device),
        }

    def decode(
        self, features: dict[str, Any], language: str, timings: bool, start_s: float, total_s: float
    ) -> tuple[str, list[Word], list[float]]:
        timings = timings and self.timings
        with self.torch.inference_mode():
            out = self.model.generate(
                **features,
                language=language,
                task="transcribe",
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                return_dict_in_generate=True,
                output_scores=True,
                return_token_timestamps=timings,
            )
        sequence = out["sequences"][0].tolist()
        scores = out["scores"]
        # The sequence holds the decoder prompt (<|startoftranscript|><|xx|><|transcribe|><|notimestamps|>), then one
        # token per score.
        prompt = len(sequence) - len(scores)
        tokens, probs, starts, ends = [], [], [], []
        stamps = out["token_timestamps"][0].tolist() if timings and "token_timestamps" in out else None
        for step, score in enumerate(scores):
            index = prompt + step
            token = sequence[index]
            if token >= self.eos:  # end of text and every special token (timestamps, languages)
                continue
            tokens.append(token)
            probs.append(float(self.torch.softmax(score[0].float(), dim=-1)[token]))
            if stamps is not None:
                t0 = stamps[index]
                t1 = stamps[index + 1] if index + 1 < len(stamps) else t0
                starts.append(min(start_s + t0, total_s))
                ends.append(min(start_s + t1, total_s))
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        words: list[Word] = []
        if stamps is not None and tokens:
            pieces = [self.processor.tokenizer.decode([token]) for token in tokens]
            words = words_from_pieces(pieces, starts, ends, probs)
        return text, words, probs
