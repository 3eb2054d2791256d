"""Mistral's Tekken tokenizer file (tekken.json) read without mistral-common, and Voxtral's transcription prompt.

transformers' VoxtralProcessor needs the `mistral_common` package (its tokenizer class is MistralCommonTokenizer and
`apply_transcription_request` builds mistral-common's TranscriptionRequest from an audio file); this module does the
same from the published file with `regex` (a transformers dependency) so the serving environment needs nothing more.
What it implements, read from mistral-common 1.13.1 (`InstructTokenizerV7._encode_instruct_transcription`,
`AudioEncoder._encode_audio_tokens`, `Tekkenizer`):

- ids: the file's `special_tokens` take ranks 0..default_num_special_tokens-1; BPE token of rank r is id
  r + default_num_special_tokens, up to default_vocab_size;
- encoding: pre-tokenize with the file's `pattern` (tiktoken pat_str), then byte-pair merge each piece by rank;
- the transcription prompt: `<s> [INST] [BEGIN_AUDIO] [AUDIO] x n [/INST]`, then `lang:xx` encoded as text (no
  space) when a language is given, then `[TRANSCRIBE]`; n = ceil(mel frames / (sampling_rate / frame_rate /
  hop_length)), with the audio padded to whole `chunk_length_s` (30 s) chunks: 375 tokens per chunk.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path


class Tekken:
    def __init__(self, path: Path) -> None:
        import regex

        data = json.loads(Path(path).read_text(encoding="utf-8"))
        config = data["config"]
        self.num_special = int(config["default_num_special_tokens"])
        self.vocab_size = int(config.get("default_vocab_size", self.num_special + len(data["vocab"])))
        inner = self.vocab_size - self.num_special
        self.pattern = regex.compile(config["pattern"])
        self.ranks: dict[bytes, int] = {}
        self.tokens: list[bytes] = []
        for item in data["vocab"][:inner]:
            token = base64.b64decode(item["token_bytes"])
            self.ranks[token] = int(item["rank"])
            self.tokens.append(token)
        self.special = {item["token_str"]: int(item["rank"]) for item in data.get("special_tokens") or []}
        self.audio = data.get("audio") or {}

    def special_id(self, name: str) -> int:
        if name not in self.special:
            raise KeyError(f"tekken.json has no special token {name}")
        return self.special[name]

    def _merge(self, piece: bytes) -> list[int]:
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, index = None, -1
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best is None or rank < best):
                    best, index = rank, i
            if best is None:
                break
            parts[index : index + 2] = [parts[index] + parts[index + 1]]
        return [self.ranks[part] + self.num_special for part in parts]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for match in self.pattern.finditer(text):
            ids.extend(self._merge(match.group().encode("utf-8")))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of the ids; control tokens and ids beyond the vocabulary are left out."""
        data = b"".join(
            self.tokens[i - self.num_special]
            for i in ids
            if self.num_special <= i < self.num_special + len(self.tokens)
        )
        return data.decode("utf-8", "replace")

    def piece(self, token_id: int) -> str:
        return self.decode([token_id])

    def audio_tokens(self, padded_samples: int) -> int:
        """[AUDIO] tokens for audio of this many samples (already padded to whole chunks)."""
        rate = float(self.audio.get("sampling_rate", 16000))
        frame_rate = float(self.audio.get("frame_rate", 12.5))
        hop = int(self.audio.get("audio_encoding_config", {}).get("hop_length", 160))
        frames = padded_samples // hop
        return math.ceil(frames / int(rate / frame_rate / hop))

    def transcription_prompt(self, audio_tokens: int, language: str = "") -> list[int]:
        ids = [self.special_id("<s>"), self.special_id("[INST]"), self.special_id("[BEGIN_AUDIO]")]
        ids += [self.special_id("[AUDIO]")] * audio_tokens
        ids.append(self.special_id("[/INST]"))
        if language:
            ids += self.encode(f"lang:{language}")
        ids.append(self.special_id("[TRANSCRIBE]"))
        return ids
