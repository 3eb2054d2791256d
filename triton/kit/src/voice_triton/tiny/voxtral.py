#!/usr/bin/env python3
"""Write a tiny Voxtral checkpoint directory in mistralai/Voxtral-Mini-3B-2507's published layout (tiny widths).

No Voxtral weights can be downloaded on the machines this project is built on, so the `voxtral` backend is tested on:

    <out>/config.json                 VoxtralForConditionalGeneration's config: audio_token_id 24, a Whisper-style
                                      audio encoder with 128 mel bins and 1500 positions (30 s windows), the
                                      projector's 4x downsampling (intermediate_size = 4 * d_model: 375 audio tokens
                                      per window), a Llama text model; tiny widths
    <out>/generation_config.json      greedy decoding, </s> ends
    <out>/preprocessor_config.json    WhisperFeatureExtractor: 128 mel bins, 16 kHz, hop 160, n_fft 400, 30 s chunks
    <out>/tekken.json                 mistral-common's Tekken tokenizer file (version v7): the control tokens at their
                                      ranks (<unk> 0, <s> 1, </s> 2, [INST] 3, [/INST] 4, [AUDIO] 24,
                                      [BEGIN_AUDIO] 25, [TRANSCRIBE] 34, fillers <SPECIAL_N> to 1000), the 256 byte
                                      tokens and a few hundred merges (the published file has 130,072), its regex
                                      pattern and its audio section (16 kHz, 12.5 tokens/s, 30 s chunks, instruct)
    <out>/model.safetensors           random weights (seeded), bfloat16 as published

The vocabulary is tiny (1000 control tokens + the BPE), so the text model's embedding stays small.

    .venv-triton/bin/python -P -m voice_triton.tiny.voxtral /tmp/voxtral-tiny [--seed 0]
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from voice_triton.tiny import writer_cli

NUM_SPECIAL = 1000
# Control tokens of the published tekken.json, by rank; the rest up to NUM_SPECIAL are <SPECIAL_N> fillers.
CONTROL = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[TRANSCRIBE]",
}
# Tekken's pre-tokenizer (tiktoken pat_str), as in the published file.
PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_WORDS = [
    "lang",
    ":en",
    ":es",
    ":fr",
    ":pt",
    ":hi",
    ":de",
    ":nl",
    ":it",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "hello",
    "world",
    "speech",
    "recognition",
    "turns",
    "audio",
    "into",
    "text",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]
HIDDEN = 32
AUDIO_WIDTH = 32


def tekken_vocab() -> list[bytes]:
    """The 256 bytes, then every prefix of the corpus words (with and without a leading space), so byte-pair merging
    by rank reaches each word."""
    vocab = [bytes([b]) for b in range(256)]
    seen = set(vocab)
    for word in _WORDS:
        for text in (word, " " + word.lstrip(":")):
            data = text.encode()
            for end in range(2, len(data) + 1):
                if data[:end] not in seen:
                    seen.add(data[:end])
                    vocab.append(data[:end])
    return vocab


def write_tekken(out: Path) -> int:
    vocab = tekken_vocab()
    specials = [
        {"rank": rank, "token_str": CONTROL.get(rank, f"<SPECIAL_{rank}>"), "is_control": True}
        for rank in range(NUM_SPECIAL)
    ]
    data = {
        "config": {
            "pattern": PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": NUM_SPECIAL + len(vocab),
            "default_num_special_tokens": NUM_SPECIAL,
            "version": "v7",
        },
        "vocab": [
            {"rank": rank, "token_bytes": base64.b64encode(token).decode(), "token_str": token.decode("latin-1")}
            for rank, token in enumerate(vocab)
        ],
        "special_tokens": specials,
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": 30.0,
            "transcription_format": "instruct",
        },
    }
    (out / "tekken.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return NUM_SPECIAL + len(vocab)


def write_model(out: Path, vocab_size: int) -> None:
    import torch
    from transformers import GenerationConfig, VoxtralConfig, VoxtralForConditionalGeneration, WhisperFeatureExtractor

    config = VoxtralConfig(
        audio_config={
            "model_type": "voxtral_encoder",
            "hidden_size": AUDIO_WIDTH,
            "intermediate_size": 4 * AUDIO_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
            "vocab_size": 51866,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": HIDDEN // 4,
            "max_position_embeddings": 32768,
            "rope_theta": 100000000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        audio_token_id=24,
        projector_hidden_act="gelu",
        torch_dtype="bfloat16",
    )
    model = VoxtralForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=11, do_sample=False).save_pretrained(out)
    WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, padding_value=0.0
    ).save_pretrained(out)


def make_checkpoint(out: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tekken(out)
    write_model(out, vocab_size)
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_cli("Voxtral", __doc__.split("\n\n")[0], make_checkpoint, argv)


if __name__ == "__main__":
    sys.exit(main())
