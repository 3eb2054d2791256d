#!/usr/bin/env python3
"""Write a tiny Orpheus-TTS checkpoint directory (the published files, tiny widths) and a SNAC 24 kHz directory.

No Orpheus or SNAC weights can be downloaded on the machines this project is built on, so `orpheus_tts` is tested on:

    <out>/config.json                 HF LlamaForCausalLM config with the published vocabulary size (156940: Llama-3's
                                      128256 + Orpheus' <custom_token_N>), tiny widths
    <out>/generation_config.json      Orpheus' sampling defaults
    <out>/model.safetensors           random weights (seeded), wired as described below
    <out>/tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                      a byte-level BPE with Llama-3's special tokens at their ids (<|begin_of_text|>
                                      128000, <|eot_id|> 128009, ...) and <custom_token_N> at 128256 + N
    <out>/snac/config.json            hubertsiuzdak/snac_24khz's config keys and values (24 kHz, rates 8*8*4*2 = hop
                                      512, vq_strides 4/2/1, 4096 codes, noise, depthwise) with narrow layers
                                      (`--snac-published-widths` keeps the published 48/1024: 19.8 M parameters,
                                      about 1.5 s per 4-frame window on a 2-core CPU)
    <out>/snac/pytorch_model.bin      snac.SNAC's state dict, what SNAC.from_pretrained(<dir>) reads

The LM is random but wired so that it speaks in frames, as a trained one does: the embedding of an audio token of
frame position p points along direction p, and the output rows of position p+1's tokens (and of end of speech after
position 6) point along it too, so the residual stream makes the next position's codes the likely ones (start of
speech has a direction of its own, read by position 0 only: a piece never ends before its first frame). Everything
else is random, so at a high temperature it also strays into text and wrong-position tokens (the invalid path).

    .venv-triton/bin/python -m voice_triton.tiny.orpheus /tmp/orpheus-tiny [--seed 0]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from voice_triton.tiny import byte_level_bpe, writer_cli

CUSTOM_TOKEN_BASE = 128256
CUSTOM_TOKENS = 28684  # published vocabulary 156940 = 128256 + 28684
AUDIO_OFFSET = 10
CODEBOOK = 4096
END_OF_SPEECH = CUSTOM_TOKEN_BASE + 2
HIDDEN = 64
FRAME_GAIN = 1.2  # output-row scale along the frame direction: next-position codes get ~97% of the mass at T=1
END_GAIN = 1.3  # end of speech after a frame's last code; about one piece in 40 frames ends there at T=0.6

SNAC_24KHZ = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}
SNAC_NARROW = {"encoder_dim": 8, "decoder_dim": 128}

_CORPUS = [
    "tara: The quick brown fox jumps over the lazy dog. Speech synthesis turns text into audio.",
    "leah: Hello world! How are you today? jess, leo, dan, mia, zac and zoe say hello too.",
]


def llama3_special_tokens() -> dict[str, int]:
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128004: "<|finetune_right_pad_id|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
    }
    tokens = {}
    reserved = 0
    for token_id in range(128000, CUSTOM_TOKEN_BASE):
        name = named.get(token_id)
        if name is None:
            name = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
        tokens[name] = token_id
    tokens.update({f"<custom_token_{n}>": CUSTOM_TOKEN_BASE + n for n in range(CUSTOM_TOKENS)})
    return tokens


def write_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = byte_level_bpe(_CORPUS, 400)
    # The special tokens go into the model's vocabulary at their published ids first; adding them afterwards then
    # reuses those ids instead of appending after the BPE vocabulary.
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    # Llama-3 has 128000 BPE tokens below its special tokens: fill the ids the tiny BPE leaves free (never produced).
    vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), 128000)})
    specials = llama3_special_tokens()
    vocab.update(specials)
    tokenizer = Tokenizer.from_str(json.dumps(state))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 128000)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<custom_token_7>",
        model_max_length=131072,
    )
    fast.save_pretrained(out)
    check = PreTrainedTokenizerFast.from_pretrained(out)
    for token, token_id in (("<|eot_id|>", 128009), ("<custom_token_3>", 128259), ("<custom_token_10>", 128266)):
        if check.convert_tokens_to_ids(token) != token_id:
            raise SystemExit(f"tokenizer: {token} is not id {token_id}")
    if check("tara: hi")["input_ids"][0] != 128000:
        raise SystemExit("tokenizer: no <|begin_of_text|> in front")


def write_llm(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=CUSTOM_TOKEN_BASE + CUSTOM_TOKENS,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128009,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for position in range(7):
            first = CUSTOM_TOKEN_BASE + AUDIO_OFFSET + position * CODEBOOK
            rows = slice(first, first + CODEBOOK)
            # Tokens of position p carry direction p (unit vectors e_0..e_6); the rows of position p+1 read it.
            embed[rows] *= 0.1
            embed[rows, position] += 1.0
            head[rows] *= 0.1
            head[rows, (position - 1) % 7] += FRAME_GAIN
        # Start of speech: a direction of its own that only position 0 reads, so a piece never ends before a frame.
        embed[CUSTOM_TOKEN_BASE + 1, 7] += 1.0
        first = CUSTOM_TOKEN_BASE + AUDIO_OFFSET
        head[first : first + CODEBOOK, 7] += FRAME_GAIN
        head[END_OF_SPEECH] *= 0.1
        head[END_OF_SPEECH, 6] += END_GAIN * FRAME_GAIN
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=128000, eos_token_id=[END_OF_SPEECH, 128009], do_sample=True, temperature=0.6, top_p=0.8
    ).save_pretrained(out)


def write_snac(out: Path, published_widths: bool) -> None:
    import torch
    from snac import SNAC

    config = dict(SNAC_24KHZ) if published_widths else {**SNAC_24KHZ, **SNAC_NARROW}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.save(SNAC(**config).state_dict(), out / "pytorch_model.bin")


def make_checkpoint(out: Path, seed: int = 0, snac_published_widths: bool = False) -> Path:
    import torch

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out)
    write_llm(out)
    write_snac(out / "snac", snac_published_widths)
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_cli(
        "Orpheus",
        __doc__.split("\n\n")[0],
        make_checkpoint,
        argv,
        flags={"--snac-published-widths": "SNAC with the published layer widths (19.8 M, slow)"},
    )


if __name__ == "__main__":
    sys.exit(main())
