"""Voxtral speech recognition on Triton's python backend: VoxtralForConditionalGeneration in transcription mode.

Loads a checkpoint directory in the published layout (mistralai/Voxtral-Mini-3B-2507: config.json,
preprocessor_config.json, tekken.json, model*.safetensors) with transformers, on CPU or GPU. transformers'
VoxtralProcessor needs the mistral-common package for its tokenizer, so the processor's two halves are done here
from the published files instead: the WhisperFeatureExtractor of preprocessor_config.json, with the audio padded to
whole 30 s chunks and the mel frames cut into one encoder input per chunk (the processor's `_retrieve_input_features`),
and the transcription request's prompt built from tekken.json by voice_triton.tekken
(`<s>[INST][BEGIN_AUDIO][AUDIO]xN[/INST]lang:xx[TRANSCRIBE]`, 375 [AUDIO] per chunk): token for token what
mistral-common 1.13.1's `encode_transcription` gives for the same tekken.json (compared once for 5, 31 and 70 s, with
and without a language; tests/asr_models keeps those ids). Long audio (up to `max_audio_seconds`, 30 min as
published) is one request of several chunks, as Voxtral is meant to take it. Greedy decoding until </s>. Without a
language the model detects it and the `language` output is "" (Voxtral does not say which); no word timings
(`word_time_offsets` false); confidence is the mean probability of the chosen tokens.
"""

from __future__ import annotations

from typing import Any

from voice_triton.asr import AsrRequest, AsrSettings, Word, mean_probability, read_request, response
from voice_triton.checkpoint import checkpoint_dir
from voice_triton.device import pick_device, pick_dtype
from voice_triton.params import ConfigError, ModelParams
from voice_triton.plain import PlainModel
from voice_triton.tekken import Tekken

# The languages Voxtral Mini 3B 2507 is published for.
LANGUAGES = ("en", "es", "fr", "pt", "hi", "de", "nl", "it")


class TritonPythonModel(PlainModel):
    def setup(self, params: ModelParams) -> None:
        import torch
        from transformers import VoxtralForConditionalGeneration, WhisperFeatureExtractor

        self.torch = torch
        self.device = pick_device(params.text("device", "auto"))
        self.dtype = pick_dtype(params.text("dtype", "auto"), self.device)
        root = checkpoint_dir(params, "voxtral")
        self.tekken = Tekken(root / "tekken.json")
        self.features = WhisperFeatureExtractor.from_pretrained(root)
        self.model = VoxtralForConditionalGeneration.from_pretrained(root, dtype=self.dtype).to(self.device).eval()
        config = self.model.config
        if self.tekken.special_id("[AUDIO]") != config.audio_token_id:
            raise ConfigError(
                f"{self.model_name}: tekken.json's [AUDIO] is {self.tekken.special_id('[AUDIO]')}, "
                f"config.json's audio_token_id {config.audio_token_id}: not one checkpoint"
            )
        self.settings = AsrSettings.from_params(params, LANGUAGES)
        self.max_new_tokens = params.integer("max_new_tokens", 4096, 1, 32768)
        self.eos = self.tekken.special_id("</s>")
        self.sample_rate = self.features.sampling_rate
        self.chunk = int(self.features.chunk_length * self.sample_rate)
        self.log_info(f"loaded {root} on {self.device} ({self.dtype})")

    def respond(self, request: Any) -> Any:
        asr = read_request(request, self.settings)
        return response(*self.transcribe(asr))

    def transcribe(self, asr: AsrRequest) -> tuple[str, list[Word], str, float]:
        torch = self.torch
        padded = -(-asr.audio.size // self.chunk) * self.chunk
        mel = self.features(
            asr.audio,
            sampling_rate=self.sample_rate,
            padding="max_length",
            max_length=padded,
            truncation=False,
            return_tensors="pt",
        )["input_features"]
        # (1, mels, chunks * 3000) -> (chunks, mels, 3000): one encoder input per 30 s chunk.
        frames = self.features.nb_max_frames
        input_features = mel.reshape(mel.shape[1], -1, frames).transpose(0, 1).to(self.device, self.dtype)
        prompt = self.tekken.transcription_prompt(self.tekken.audio_tokens(padded), asr.language)
        input_ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                input_features=input_features,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=self.eos,
                pad_token_id=self.eos,
                return_dict_in_generate=True,
                output_scores=True,
            )
        sequence = out["sequences"][0].tolist()[len(prompt) :]
        tokens, probs = [], []
        for token, score in zip(sequence, out["scores"], strict=False):
            if token == self.eos:
                break
            tokens.append(token)
            probs.append(float(torch.softmax(score[0].float(), dim=-1)[token]))
        transcript = self.tekken.decode(tokens).strip()
        return transcript, [], asr.language, mean_probability(probs)
