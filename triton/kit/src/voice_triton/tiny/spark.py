#!/usr/bin/env python3
"""Write a tiny Spark-TTS checkpoint directory in the published layout and file formats, with random weights.

No Spark-TTS weights can be downloaded on the machines this project is built on, so the Triton models are tested on
a checkpoint that has everything the published Spark-TTS-0.5B directory has, only small:

    <out>/config.yaml                           top-level keys of the published file (sample_rate, latent_hop_length,
                                                ref_segment_duration, volume_normalize, ...)
    <out>/BiCodec/config.yaml                   `audio_tokenizer:` block with the published keys; tiny widths, but the
                                                published token facts: 8192 semantic codes, 32 global tokens from a
                                                4^6 FSQ, decoder rates 8*5*4*2 = 320 samples per token (50 tokens/s)
    <out>/BiCodec/model.safetensors             spark-tts-lib's BiCodec state dict (the published parameter names)
    <out>/wav2vec2-large-xlsr-53/               HF Wav2Vec2 config.json, preprocessor_config.json, pytorch_model.bin
                                                (16 layers: BiCodec mixes hidden states 11, 14 and 16)
    <out>/LLM/                                  HF Qwen2ForCausalLM config.json, generation_config.json,
                                                model.safetensors; a Qwen2 tokenizer (tokenizer.json,
                                                tokenizer_config.json, vocab.json, merges.txt) whose added tokens are
                                                Spark's real special tokens (<|task_tts|>, <|bicodec_semantic_N|>, ...)

Run it with the Triton environment's interpreter (it needs torch, transformers and spark-tts-lib):

    .venv-triton/bin/python -m voice_triton.tiny.spark /tmp/spark-tiny [--seed 0]

The same seed writes the same weights. The loading code under test is the real one: spark-tts-lib's
BiCodec.load_from_checkpoint, transformers' from_pretrained; nothing in the Triton models knows the checkpoint is tiny.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from voice_triton.tiny import byte_level_bpe, writer_cli

SAMPLE_RATE = 16000
HOP = 320  # samples per semantic token: the decoder's rates multiply to this
SEMANTIC_CODES = 8192
GLOBAL_TOKENS = 32
FSQ_LEVELS = [4, 4, 4, 4, 4, 4]  # 4**6 = 4096 global codes
GLOBAL_CODES = 4**6
WIDTH = 32  # every 1024-wide feature of the published BiCodec
MELS = 128
EOS_SCALE = 1.5  # measured: pieces of 14..600 tokens (0.3..12 s) over a dozen seeds and texts

TOP_CONFIG = f"""highpass_cutoff_freq: 40
sample_rate: {SAMPLE_RATE}
segment_duration: 2.4 # (s)
max_val_duration: 12
latent_hop_length: {HOP}
ref_segment_duration: 6
volume_normalize: true
"""


def bicodec_config() -> str:
    """The published BiCodec/config.yaml keys, tiny widths."""
    vocos = f"""    vocos_dim: {WIDTH}
    vocos_intermediate_dim: {2 * WIDTH}
    vocos_num_layers: 1"""
    return f"""audio_tokenizer:
  mel_params:
    sample_rate: {SAMPLE_RATE}
    n_fft: 1024
    win_length: 640
    hop_length: {HOP}
    mel_fmin: 10
    mel_fmax: null
    num_mels: {MELS}

  encoder:
    input_channels: {WIDTH}
{vocos}
    out_channels: {WIDTH}
    sample_ratios: [1, 1]

  decoder:
    input_channel: {WIDTH}
    channels: 64
    rates: [8, 5, 4, 2]
    kernel_sizes: [16, 11, 8, 4]

  quantizer:
    input_dim: {WIDTH}
    codebook_size: {SEMANTIC_CODES}
    codebook_dim: 8
    commitment: 0.25
    codebook_loss_weight: 2.0
    use_l2_normlize: true
    threshold_ema_dead_code: 0.2

  speaker_encoder:
    input_dim: {MELS}
    out_dim: {WIDTH}
    latent_dim: 16
    token_num: {GLOBAL_TOKENS}
    fsq_levels: {FSQ_LEVELS}
    fsq_num_quantizers: 1

  prenet:
    input_channels: {WIDTH}
{vocos}
    out_channels: {WIDTH}
    condition_dim: {WIDTH}
    sample_ratios: [1, 1]
    use_tanh_at_final: false

  postnet:
    input_channels: {WIDTH}
{vocos}
    out_channels: {WIDTH}
    use_tanh_at_final: false
"""


def spark_special_tokens() -> list[str]:
    """Spark-TTS's added tokens (spark-tts-lib's token_parser names them): tasks, structure, codec codes, attributes."""
    tasks = ["vc", "tts", "asr", "s2s", "t2s", "understand", "cap", "controllable_tts", "prompt_tts", "edit"]
    structure = [
        f"<|{edge}_{what}|>"
        for what in ("content", "global_token", "semantic_token", "style_label", "acoustic_token")
        for edge in ("start", "end")
    ]
    tokens = [f"<|task_{t}|>" for t in tasks] + structure
    tokens += [f"<|bicodec_global_{i}|>" for i in range(GLOBAL_CODES)]
    tokens += [f"<|bicodec_semantic_{i}|>" for i in range(SEMANTIC_CODES)]
    tokens += [f"<|gender_{i}|>" for i in range(2)] + [f"<|age_{i}|>" for i in range(5)]
    tokens += [f"<|emotion_{i}|>" for i in range(25)]
    for label in ("pitch_label", "pitch_var_label", "loudness_label", "speed_label"):
        tokens += [f"<|{label}_{i}|>" for i in range(5)]
    tokens += [f"<|pitch_value_{i}|>" for i in range(1001)] + [f"<|pitch_var_value_{i}|>" for i in range(11)]
    tokens += [f"<|loudness_value_{i}|>" for i in range(31)] + [f"<|speed_value_{i}|>" for i in range(11)]
    return tokens


# A little English and Chinese for the byte-level BPE merges (the base vocabulary is the 256 bytes either way).
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Speech synthesis turns text into audio, sentence by sentence.",
    "Hello world! How are you today? This is a test of a tiny text to speech model with random weights.",
    "今天天气很好。我们去公园散步吧！你觉得怎么样？语音合成把文字变成声音。",
]


def write_tokenizer(llm_dir: Path) -> dict[str, int]:
    from transformers import AddedToken, PreTrainedTokenizerFast

    tokenizer = byte_level_bpe(_CORPUS, 600)
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer.add_special_tokens(qwen_specials)
    # Not "special": the official runtime decodes with skip_special_tokens=True and must still see the codec tokens.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in spark_special_tokens()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    fast.save_pretrained(llm_dir)
    config_path = llm_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"  # what the published LLM/ directory declares
    config["bos_token"] = None
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    # The slow-tokenizer files the published directory also carries.
    state = json.loads(tokenizer.to_str())
    (llm_dir / "vocab.json").write_text(json.dumps(state["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = state["model"]["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (llm_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return {"vocab_size": tokenizer.get_vocab_size(), "eos": tokenizer.token_to_id("<|im_end|>")}


def write_llm(llm_dir: Path, vocab: dict[str, int]) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    padded = -(-vocab["vocab_size"] // 64) * 64  # the published embedding is padded past the tokenizer too
    config = Qwen2Config(
        vocab_size=padded,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        bos_token_id=vocab["eos"],
        eos_token_id=vocab["eos"],
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # wider than the default init so the random model's choices depend on its input
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
        # A longer eos row (tied embeddings: also its output row) makes the random model end a piece after tens to
        # hundreds of tokens, as a trained one does, instead of always running to max_new_tokens.
        model.get_input_embeddings().weight[vocab["eos"]] *= EOS_SCALE
    model.save_pretrained(llm_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=vocab["eos"], do_sample=True, top_k=50, top_p=0.95, temperature=0.8).save_pretrained(
        llm_dir
    )


def write_wav2vec2(out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=WIDTH,
        num_hidden_layers=16,
        num_attention_heads=2,
        intermediate_size=2 * WIDTH,
        conv_dim=(16,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),  # 320 samples per frame, as xlsr-53
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        vocab_size=32,
    )
    Wav2Vec2Model(config).save_pretrained(out, safe_serialization=False)  # pytorch_model.bin, as published
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)


def write_bicodec(out: Path) -> None:
    from safetensors.torch import save_file
    from spark_tts_lib.models.bicodec import BiCodec
    from spark_tts_lib.modules.encoder_decoder.feat_decoder import Decoder
    from spark_tts_lib.modules.encoder_decoder.feat_encoder import Encoder
    from spark_tts_lib.modules.encoder_decoder.wave_generator import WaveGenerator
    from spark_tts_lib.modules.speaker.speaker_encoder import SpeakerEncoder
    from spark_tts_lib.modules.vq.factorized_vector_quantize import FactorizedVectorQuantize
    from spark_tts_lib.utils.file import load_config

    (out / "config.yaml").write_text(bicodec_config(), encoding="utf-8")
    config = load_config(out / "config.yaml")["audio_tokenizer"]
    model = BiCodec(
        mel_params=config["mel_params"],
        encoder=Encoder(**config["encoder"]),
        decoder=WaveGenerator(**config["decoder"]),
        quantizer=FactorizedVectorQuantize(**config["quantizer"]),
        speaker_encoder=SpeakerEncoder(**config["speaker_encoder"]),
        prenet=Decoder(**config["prenet"]),
        postnet=Decoder(**config["postnet"]),
    )
    # Weight-normed layers are saved in their parametrized form (weight_g/weight_v), as the published file is.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))


def make_checkpoint(out: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(TOP_CONFIG, encoding="utf-8")
    for sub in ("BiCodec", "wav2vec2-large-xlsr-53", "LLM"):
        (out / sub).mkdir(exist_ok=True)
    write_bicodec(out / "BiCodec")
    write_wav2vec2(out / "wav2vec2-large-xlsr-53")
    vocab = write_tokenizer(out / "LLM")
    write_llm(out / "LLM", vocab)
    return out


def main(argv: list[str] | None = None) -> int:
    return writer_cli("Spark-TTS", __doc__.split("\n\n")[0], make_checkpoint, argv)


if __name__ == "__main__":
    sys.exit(main())
