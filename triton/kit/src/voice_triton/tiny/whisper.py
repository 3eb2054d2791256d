#!/usr/bin/env python3
"""Write a tiny Whisper checkpoint directory in openai/whisper-large-v3-turbo's published layout (tiny widths).

No Whisper weights can be downloaded on the machines this project is built on, so the `whisper` backend is tested on:

    <out>/config.json                 WhisperForConditionalGeneration's config: the published vocabulary (51866),
                                      special-token ids, 128 mel bins and 1500 encoder positions (30 s windows),
                                      tiny widths (d_model 32, 2+2 layers)
    <out>/generation_config.json      the published generation settings: lang_to_id (100 languages), task_to_id,
                                      no_timestamps_token_id, suppress tokens, alignment_heads (word timings)
    <out>/preprocessor_config.json    WhisperFeatureExtractor: 128 mel bins, 16 kHz, hop 160, n_fft 400, 30 s chunks
    <out>/vocab.json, merges.txt      a byte-level BPE (small, padded with never-produced fillers up to id 50256)
    <out>/added_tokens.json, special_tokens_map.json, tokenizer_config.json, normalizer.json, tokenizer.json
                                      the specials at their published ids: <|endoftext|> 50257,
                                      <|startoftranscript|> 50258, <|en|> 50259 .. <|yue|> 50358, <|translate|> 50359,
                                      <|transcribe|> 50360, <|startoflm|>, <|startofprev|>, <|nospeech|> 50363,
                                      <|notimestamps|> 50364, <|0.00|> .. <|30.00|> 50365 .. 51865
    <out>/model.safetensors           random weights (seeded)

    .venv-triton/bin/python -P -m voice_triton.tiny.whisper /tmp/whisper-tiny [--seed 0]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from voice_triton.tiny import byte_level_bpe, writer_cli

ENDOFTEXT = 50257
START = 50258
LANGUAGE_BASE = 50259
NO_TIMESTAMPS = 50364
VOCAB = 51866
D_MODEL = 32

_CORPUS = [
    " the quick brown fox jumps over the lazy dog. speech recognition turns audio into text.",
    " Hello world! How are you today? One two three four five six seven eight nine ten.",
]


def languages() -> list[str]:
    """Whisper large-v3's 100 language codes in id order (transformers' table, which is the published order)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)


def special_tokens() -> list[str]:
    """The added tokens from id 50257 on, in id order."""
    tokens = ["<|endoftext|>", "<|startoftranscript|>"]
    tokens += [f"<|{code}|>" for code in languages()]
    tokens += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>"]
    tokens += ["<|notimestamps|>"]
    tokens += [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return tokens


def write_tokenizer(out: Path) -> None:
    from transformers import WhisperTokenizer, WhisperTokenizerFast

    bpe = byte_level_bpe(_CORPUS, 400)
    state = json.loads(bpe.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    # GPT-2's vocabulary has 50257 entries below <|endoftext|>: fill the ids the tiny BPE leaves free (never produced).
    vocab.update({f"\u0120unused{i}": i for i in range(len(vocab), ENDOFTEXT)})
    merges = state["model"]["merges"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    specials = special_tokens()
    slow = WhisperTokenizer(
        out / "vocab.json",
        out / "merges.txt",
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=448,
    )
    slow.add_tokens(specials[1:], special_tokens=True)
    slow.save_pretrained(out)
    # The published folder has both; the fast one (tokenizer.json) is what WhisperProcessor loads first.
    WhisperTokenizerFast.from_pretrained(out).save_pretrained(out)
    (out / "normalizer.json").write_text("{}\n", encoding="utf-8")
    check = WhisperTokenizerFast.from_pretrained(out)
    for token, token_id in (("<|startoftranscript|>", START), ("<|en|>", LANGUAGE_BASE), ("<|30.00|>", VOCAB - 1)):
        if check.convert_tokens_to_ids(token) != token_id:
            raise SystemExit(f"tokenizer: {token} is not id {token_id}")


def write_model(out: Path) -> None:
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    codes = languages()
    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=128,
        d_model=D_MODEL,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * D_MODEL,
        decoder_ffn_dim=2 * D_MODEL,
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=ENDOFTEXT,
        eos_token_id=ENDOFTEXT,
        pad_token_id=ENDOFTEXT,
        decoder_start_token_id=START,
        torch_dtype="float32",
    )
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(out, safe_serialization=True)
    generation = GenerationConfig(
        bos_token_id=ENDOFTEXT,
        eos_token_id=ENDOFTEXT,
        pad_token_id=ENDOFTEXT,
        decoder_start_token_id=START,
        max_length=448,
        begin_suppress_tokens=[220, ENDOFTEXT],
        suppress_tokens=[],
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": LANGUAGE_BASE + i for i, code in enumerate(codes)},
        task_to_id={"translate": 50359, "transcribe": 50360},
        no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=50362,
        forced_decoder_ids=None,
        # Cross-attention heads whose alignment gives word timings (layer, head): every decoder head of the tiny model.
        alignment_heads=[[0, 0], [0, 1], [1, 0], [1, 1]],
        return_timestamps=False,
    )
    generation.save_pretrained(out)
    WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, padding_value=0.0
    ).save_pretrained(out)


def make_checkpoint(out: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    write_model(out)
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_cli("Whisper", __doc__.split("\n\n")[0], make_checkpoint, argv)


if __name__ == "__main__":
    sys.exit(main())
