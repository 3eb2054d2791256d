#!/usr/bin/env python3
"""Write a tiny CosyVoice2 checkpoint directory in the published layout (FunAudioLLM/CosyVoice2-0.5B), random weights.

No CosyVoice2 weights can be downloaded on the machines this project is built on, so the backend is tested on a
directory with the published files, only small:

    <out>/cosyvoice2.yaml        the published HyperPyYAML structure (classes, !ref, the GAN/data/training sections)
                                 with tiny widths and the published token facts: speech_token_size 6561 (end of
                                 speech 6561, fill token 6563), sos_eos/task_id rows, 25 Hz tokens, token_mel_ratio 2,
                                 24 kHz audio (HiFT rates 8*5*3 * hop 4 = 480 samples per mel frame, 960 per token)
    <out>/llm.pt                 CosyVoice2LM's state dict (Qwen2, llm_embedding, llm_decoder, speech_embedding)
    <out>/flow.pt                the flow's state dict (build_flow of the yaml's `flow` section)
    <out>/hift.pt                HiFTGenerator's state dict (weight norm as torch parametrizations)
    <out>/CosyVoice-BlankEN/     a tiny Qwen2 config.json and model.safetensors (the same weights as llm.pt's
                                 backbone), and a Qwen2-style byte-level BPE tokenizer (tokenizer.json,
                                 tokenizer_config.json, vocab.json, merges.txt) that already carries the special tokens
                                 upstream's QwenTokenizer adds at load time (<|endofprompt|>, [breath], <strong>,
                                 [laughter], ...), in its order, so adding them again changes no id
    <out>/spk2info.pt            two preset speakers (tiny_female: an x-vector only, as SFT speakers are published;
                                 tiny_male: a saved zero-shot speaker with its prompt), see `spk2info`
    <out>/campplus.onnx          a tiny CAM++ stand-in with the published interface: "input" fbank [B, T, 80]
                                 float -> "output" x-vector [B, 192] float (per-frame projection, tanh, mean and
                                 RMS pooling over time, projection), so different voices give different vectors
    <out>/speech_tokenizer_v2.onnx
                                 a tiny V2 speech tokenizer with the published interface: "feats" log-mel
                                 [B, 128, T] float and "feats_length" [B] int32 -> "indices" [B, ceil(T / 4)] int64
                                 in 0..6560 (a 1x1 and a stride-4 convolution, two ArgMax heads of 81 classes
                                 combined as hi * 81 + lo: 25 tokens per second from 100 frames per second)

Every module is built from the written yaml through voice_triton.cosyvoice2.config, the reader the backend uses, so
the yaml and the weights cannot disagree. The flow encoder keeps the published 512 channels (upstream hard-codes 512
in its lookahead and upsampling layers, so the independent reference loads this flow.pt only at that width) and
shrinks heads, feed forward and depth instead; every other width is small.

The two ONNX graphs are written with the `onnx` package's helpers (pinned in triton/requirements-models.txt: the
Triton environment had no ONNX protobuf classes otherwise), opset 17 and IR version 8, so that older onnxruntime
releases (NGC images) load them too. Their input and output names, dtypes and dynamic axes are the published ones;
the front end (voice_triton.cosyvoice2.frontend) reads the names from the session anyway, as upstream does.

    .venv-triton/bin/python -m voice_triton.tiny.cosyvoice2 /tmp/cosyvoice2-tiny [--seed 0]

The same seed writes the same weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from voice_triton.tiny import byte_level_bpe, writer_cli

SPEECH_TOKEN_SIZE = 6561
QWEN2_DIR = "CosyVoice-BlankEN"
# The two ONNX models of the published checkpoint (see the module docstring).
ONNX_FILES = ("campplus.onnx", "speech_tokenizer_v2.onnx")
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# The speech tokenizer's tiny heads: 81 * 81 = 6561 codes.
_TOKEN_HEAD = 81

# The tiny widths, named by the yaml key they fill. Published values in comments.
TINY: dict[str, Any] = {
    "llm_size": 64,  # 896: Qwen2's hidden size, also llm_input_size / llm_output_size
    "encoder_size": 512,  # 512 (kept: see the module docstring)
    "encoder_heads": 2,  # 8
    "encoder_linear_units": 64,  # 2048
    "encoder_blocks": 1,  # 6
    "estimator_channels": 64,  # 256
    "estimator_head_dim": 16,  # 64
    "estimator_blocks": 1,  # 4
    "estimator_mid_blocks": 1,  # 12
    "estimator_heads": 2,  # 8
    "hift_channels": 32,  # 512 (HiFT base_channels and the F0 predictor's cond_channels)
}

# Upstream's QwenTokenizer makes <|endoftext|> eos and pad and adds these as additional special tokens, in this order,
# every time it loads CosyVoice-BlankEN (the non-chat model's rows for them stay random).
COSYVOICE_SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endofprompt|>",
    "[breath]",
    "<strong>",
    "</strong>",
    "[noise]",
    "[laughter]",
    "[cough]",
    "[clucking]",
    "[accent]",
    "[quick_breath]",
    "<laughter>",
    "</laughter>",
    "[hissing]",
    "[sigh]",
    "[vocalized-noise]",
    "[lipsmack]",
    "[mn]",
]
# CosyVoice2's language tags are plain text in the prompt (<|en|>, <|zh|>, ...): the tokenizer splits them like any
# text, in the published checkpoint as here, so they are part of the BPE corpus rather than added tokens.
LANGUAGE_TAGS = ["<|zh|>", "<|en|>", "<|jp|>", "<|yue|>", "<|ko|>"]


def cosyvoice2_yaml(widths: dict[str, Any] = TINY) -> str:
    """cosyvoice2.yaml in the published structure with `widths`."""
    w = widths
    return f"""# set random seed, so that you may reproduce your result.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

# fixed params
sample_rate: 24000
llm_input_size: {w["llm_size"]}
llm_output_size: {w["llm_size"]}
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

# stream related params
chunk_size: 25 # streaming inference chunk size, in token
num_decoding_left_chunks: -1 # streaming inference flow decoder left chunk size, <0 means use all left chunks

# model params
llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: {SPEECH_TOKEN_SIZE}
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: {w["encoder_size"]}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {SPEECH_TOKEN_SIZE}
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: {w["encoder_size"]}
        attention_heads: {w["encoder_heads"]}
        linear_units: {w["encoder_linear_units"]}
        num_blocks: {w["encoder_blocks"]}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {w["encoder_size"]}
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{w["estimator_channels"]}]
            dropout: 0.0
            attention_head_dim: {w["estimator_head_dim"]}
            n_blocks: {w["estimator_blocks"]}
            num_mid_blocks: {w["estimator_mid_blocks"]}
            num_heads: {w["estimator_heads"]}
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {w["hift_channels"]}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {w["hift_channels"]}

# gan related module
mel_spec_transform1: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: null
    center: False
hifigan: !new:cosyvoice.hifigan.hifigan.HiFiGan
    generator: !ref <hift>
    discriminator: !new:cosyvoice.hifigan.discriminator.MultipleDiscriminator
        mpd: !new:matcha.hifigan.models.MultiPeriodDiscriminator
        mrd: !new:cosyvoice.hifigan.discriminator.MultiResSpecDiscriminator
    mel_spec_transform: [
        !ref <mel_spec_transform1>
    ]

# processor functions
parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
tokenize: !name:cosyvoice.dataset.processor.tokenize
    get_tokenizer: !ref <get_tokenizer>
    allowed_special: !ref <allowed_special>
filter: !name:cosyvoice.dataset.processor.filter
    max_length: 40960
    min_length: 100
    token_max_length: 200
    token_min_length: 1
resample: !name:cosyvoice.dataset.processor.resample
    resample_rate: !ref <sample_rate>
truncate: !name:cosyvoice.dataset.processor.truncate
    truncate_length: 24480 # must be a multiplier of hop_size
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False
compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank
    feat_extractor: !ref <feat_extractor>
    token_mel_ratio: 2
parse_embedding: !name:cosyvoice.dataset.processor.parse_embedding
    normalize: True
shuffle: !name:cosyvoice.dataset.processor.shuffle
    shuffle_size: 1000
sort: !name:cosyvoice.dataset.processor.sort
    sort_size: 500  # sort_size should be less than shuffle_size
batch: !name:cosyvoice.dataset.processor.batch
    batch_type: 'dynamic'
    max_frames_in_batch: 2000
padding: !name:cosyvoice.dataset.processor.padding
    use_spk_embedding: False # change to True during sft

# dataset processor pipeline
data_pipeline: [
    !ref <parquet_opener>,
    !ref <tokenize>,
    !ref <filter>,
    !ref <resample>,
    !ref <compute_fbank>,
    !ref <parse_embedding>,
    !ref <shuffle>,
    !ref <sort>,
    !ref <batch>,
    !ref <padding>,
]

# llm flow train conf
train_conf:
    optim: adam
    optim_conf:
        lr: 1e-5 # change to 1e-5 during sft
    scheduler: constantlr # change to constantlr during sft
    scheduler_conf:
        warmup_steps: 2500
    max_epoch: 200
    grad_clip: 5
    accum_grad: 2
    log_interval: 100
    save_per_step: -1
"""


# A little English and Chinese (CosyVoice2's main languages) with the language tags and a CosyVoice2 instruction
# prompt, for the byte-level BPE merges.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Speech synthesis turns text into audio, sentence by sentence.",
    "Hello world! How are you today? This is a test of a tiny text to speech model with random weights.",
    "You are a helpful assistant. Please speak as fast as possible.<|endofprompt|>",
    "今天天气很好。我们去公园散步吧！你觉得怎么样？语音合成把文字变成声音。用四川话说这句话。",
    " ".join(LANGUAGE_TAGS),
]


def write_tokenizer(directory: Path) -> dict[str, int]:
    """The Qwen2-style tokenizer files; returns the vocabulary size and the ids Qwen2's config names."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = byte_level_bpe(_CORPUS, 500)
    # Qwen2's own specials first (<|endoftext|> is its eos), then CosyVoice's, as upstream's QwenTokenizer adds them.
    tokenizer.add_special_tokens(["<|endoftext|>", *COSYVOICE_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=COSYVOICE_SPECIAL_TOKENS,
        model_max_length=32768,
    )
    fast.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"  # what the published CosyVoice-BlankEN declares
    config["bos_token"] = None
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    # The slow-tokenizer files the published directory carries.
    state = json.loads(tokenizer.to_str())
    (directory / "vocab.json").write_text(json.dumps(state["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in state["model"]["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return {"vocab_size": tokenizer.get_vocab_size(), "endoftext": tokenizer.token_to_id("<|endoftext|>")}


def qwen2_config(hidden_size: int, vocab: dict[str, int]) -> Any:
    """The published BlankEN shape in miniature: grouped-query attention, tied embeddings, Qwen2's rope base."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=-(-vocab["vocab_size"] // 64) * 64,  # the published embedding is padded past the tokenizer too
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=vocab["endoftext"],
        eos_token_id=vocab["endoftext"],
        torch_dtype="float32",
    )


def _onnx_model(graph: Any) -> Any:
    """A ModelProto of `graph` at the opset and IR version the module docstring names, checked by onnx itself."""
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="voice_triton.tiny.cosyvoice2",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def campplus_graph(seed: int = 0, hidden: int = 32, embedding_size: int = 192) -> Any:
    """Tiny CAM++: "input" [B, T, 80] -> "output" [B, 192].

    The real input is mean-normalised over time, so a plain time average would be zero for every voice: the frames
    go through a projection and tanh first, and both the mean and the RMS over time are pooled (CAM++ itself pools
    statistics too).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "frame_weight": rng.normal(0.0, 0.3, (80, hidden)),
        "frame_bias": rng.normal(0.0, 0.1, (hidden,)),
        "embedding_weight": rng.normal(0.0, 1.0 / np.sqrt(2 * hidden), (2 * hidden, embedding_size)),
        "embedding_bias": rng.normal(0.0, 0.1, (embedding_size,)),
    }
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    nodes = [
        helper.make_node("MatMul", ["input", "frame_weight"], ["frames"]),
        helper.make_node("Add", ["frames", "frame_bias"], ["frames_biased"]),
        helper.make_node("Tanh", ["frames_biased"], ["hidden"]),
        helper.make_node("ReduceMean", ["hidden"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["hidden", "hidden"], ["squares"]),
        helper.make_node("ReduceMean", ["squares"], ["mean_square"], axes=[1], keepdims=0),
        helper.make_node("Sqrt", ["mean_square"], ["rms"]),
        helper.make_node("Concat", ["mean", "rms"], ["stats"], axis=1),
        helper.make_node("Gemm", ["stats", "embedding_weight", "embedding_bias"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "frames", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", embedding_size])],
        initializer=initializers,
    )
    return _onnx_model(graph)


def speech_tokenizer_graph(seed: int = 0, hidden: int = 16) -> Any:
    """Tiny V2 speech tokenizer: "feats" [B, 128, T], "feats_length" [B] int32 -> "indices" [B, ceil(L / 4)] int64.

    The features are cut to feats_length (batch 1 as upstream feeds it), then a 1x1 and a stride-4 convolution
    (zero padding at the end, so a partial last group still gives a token, as the real model's two stride-2
    convolutions do) produce 2 * 81 scores per token; the two ArgMax heads combine to hi * 81 + lo in 0..6560.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 1)  # not campplus_graph's stream: the two models get different weights
    heads = 2 * _TOKEN_HEAD
    weights = {
        "mix_weight": rng.normal(0.0, 1.0 / np.sqrt(128), (hidden, 128, 1)),
        "mix_bias": rng.normal(0.0, 0.1, (hidden,)),
        "token_weight": rng.normal(0.0, 1.0 / np.sqrt(4 * hidden), (heads, hidden, 4)),
        "token_bias": rng.normal(0.0, 0.1, (heads,)),
    }
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    constants = {
        "zero": np.array([0], dtype=np.int64),
        "time_axis": np.array([2], dtype=np.int64),
        "head_split": np.array([_TOKEN_HEAD, _TOKEN_HEAD], dtype=np.int64),
        "head_size": np.array(_TOKEN_HEAD, dtype=np.int64),
    }
    initializers += [numpy_helper.from_array(value, name) for name, value in constants.items()]
    nodes = [
        helper.make_node("Cast", ["feats_length"], ["length"], to=TensorProto.INT64),
        helper.make_node("Slice", ["feats", "zero", "length", "time_axis"], ["valid"]),
        helper.make_node("Conv", ["valid", "mix_weight", "mix_bias"], ["mixed"], kernel_shape=[1]),
        helper.make_node("Tanh", ["mixed"], ["hidden"]),
        helper.make_node(
            "Conv", ["hidden", "token_weight", "token_bias"], ["scores"], kernel_shape=[4], strides=[4], pads=[0, 3]
        ),
        helper.make_node("Split", ["scores", "head_split"], ["hi_scores", "lo_scores"], axis=1),
        helper.make_node("ArgMax", ["hi_scores"], ["hi"], axis=1, keepdims=0),
        helper.make_node("ArgMax", ["lo_scores"], ["lo"], axis=1, keepdims=0),
        helper.make_node("Mul", ["hi", "head_size"], ["hi_scaled"]),
        helper.make_node("Add", ["hi_scaled", "lo"], ["indices"]),
    ]
    graph = helper.make_graph(
        nodes,
        "speech_tokenizer_v2_tiny",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["batch", 128, "frames"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, ["batch"]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", "tokens"])],
        initializer=initializers,
    )
    return _onnx_model(graph)


def write_onnx_models(out: Path, seed: int = 0) -> None:
    """campplus.onnx and speech_tokenizer_v2.onnx; the same seed writes the same bytes."""
    campplus, tokenizer = ONNX_FILES
    (out / campplus).write_bytes(campplus_graph(seed).SerializeToString())
    (out / tokenizer).write_bytes(speech_tokenizer_graph(seed).SerializeToString())


def make_checkpoint(out: Path, seed: int = 0) -> Path:
    import torch

    from voice_triton.cosyvoice2.config import build_hift, parse_config
    from voice_triton.cosyvoice2.flow import build_flow
    from voice_triton.cosyvoice2.llm import CosyVoice2LM

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    text = cosyvoice2_yaml()
    (out / "cosyvoice2.yaml").write_text(text, encoding="utf-8")
    config = parse_config(text)  # the backend's reader: the weights below are built from what it understands

    blank = out / QWEN2_DIR
    blank.mkdir(exist_ok=True)
    vocab = write_tokenizer(blank)
    qwen2 = qwen2_config(config.llm.llm_input_size, vocab)
    config.llm.check_hidden_size(qwen2.hidden_size)
    lm = CosyVoice2LM(qwen2, speech_token_size=config.llm.speech_token_size).eval()
    # BlankEN's weights are the backbone's (upstream reads them, then llm.pt overwrites them all).
    lm.llm.model.save_pretrained(blank, safe_serialization=True)
    torch.save(lm.state_dict(), out / "llm.pt")

    torch.save(build_flow(config.flow).state_dict(), out / "flow.pt")
    torch.save(build_hift(config).state_dict(), out / "hift.pt")
    write_onnx_models(out, seed)
    torch.save(spk2info(vocab_ids=blank, seed=seed), out / "spk2info.pt")
    return out


def spk2info(vocab_ids: Path, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Two preset speakers in the two forms upstream's spk2info.pt entries take: `tiny_female` as an SFT speaker (an
    x-vector `embedding` only), `tiny_male` as a saved zero-shot speaker (prompt text ids, the LLM's and the flow's
    prompt speech tokens, the prompt mel and both embeddings)."""
    import torch
    from transformers import AutoTokenizer

    generator = torch.Generator().manual_seed(seed + 7)
    tokens = torch.randint(0, SPEECH_TOKEN_SIZE, (1, 20), generator=generator, dtype=torch.int32)
    prompt_ids = AutoTokenizer.from_pretrained(vocab_ids)("A saved voice.")["input_ids"]
    male = torch.randn(1, 192, generator=generator)
    return {
        "tiny_female": {"embedding": torch.randn(1, 192, generator=generator)},
        "tiny_male": {
            "prompt_text": torch.tensor([prompt_ids], dtype=torch.int32),
            "llm_prompt_speech_token": tokens,
            "flow_prompt_speech_token": tokens,
            "prompt_speech_feat": torch.randn(1, 40, 80, generator=generator) - 5.0,
            "llm_embedding": male,
            "flow_embedding": male,
        },
    }


def main(argv: list[str] | None = None) -> int:
    return writer_cli("CosyVoice2", __doc__.split("\n\n")[0], make_checkpoint, argv)


if __name__ == "__main__":
    sys.exit(main())
