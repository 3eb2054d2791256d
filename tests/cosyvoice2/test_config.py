"""voice_triton.cosyvoice2.config reads a cosyvoice2.yaml in the published structure (FunAudioLLM/CosyVoice2-0.5B)
without executing it, and maps its model sections onto our classes' arguments."""

from __future__ import annotations

import pytest

from voice_triton.cosyvoice2.config import ConfigError, Node, build_hift, load_yaml, parse_config
from voice_triton.cosyvoice2.flow import PUBLISHED_FLOW
from voice_triton.cosyvoice2.hift import (
    PUBLISHED_DILATIONS,
    PUBLISHED_RESBLOCK_KERNEL_SIZES,
    PUBLISHED_SOURCE_RESBLOCK_KERNEL_SIZES,
    PUBLISHED_UPSAMPLE_KERNEL_SIZES,
    PUBLISHED_UPSAMPLE_RATES,
)

# The published file's structure and model values (sections after `hift` abridged: the GAN, data pipeline and
# training parts are parsed but not interpreted).
PUBLISHED_YAML = """\
# set random seed, so that you may reproduce your result.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

# fixed params
sample_rate: 24000
llm_input_size: 896
llm_output_size: 896
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

# stream related params
chunk_size: 25 # streaming inference chunk size, in token
num_decoding_left_chunks: -1 # streaming inference flow decoder left chunk size, <0 means use all left chunks

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
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
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: 8
        linear_units: 2048
        num_blocks: 6
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        use_dynamic_chunk: False
        use_dynamic_left_chunk: False
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
            channels: [256]
            dropout: 0.0
            attention_head_dim: 64
            n_blocks: 4
            num_mid_blocks: 12
            num_heads: 8
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 512
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
        cond_channels: 512

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
        mrd: !new:cosyvoice.hifigan.discriminator.MultiResolutionSpectralDiscriminator
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
data_pipeline: [
    !ref <parquet_opener>,
    !ref <tokenize>,
    !ref <compute_fbank>,
]

train_conf:
    optim: adam
    optim_conf:
        lr: 1e-5 # change to 1e-5 during sft
    max_epoch: 200
"""


def test_published_flow_section_is_published_flow() -> None:
    assert parse_config(PUBLISHED_YAML).flow == PUBLISHED_FLOW


def test_published_llm_facts() -> None:
    config = parse_config(PUBLISHED_YAML)
    llm = config.llm
    assert (llm.speech_token_size, llm.llm_input_size, llm.llm_output_size) == (6561, 896, 896)
    assert llm.mix_ratio == (5, 15)
    assert llm.sampling == {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}
    llm.check_hidden_size(896)
    with pytest.raises(ConfigError, match="llm_input_size"):
        llm.check_hidden_size(64)
    assert (config.sample_rate, config.token_frame_rate, config.token_mel_ratio) == (24000, 25, 2)


def test_published_hift_facts() -> None:
    config = parse_config(PUBLISHED_YAML)
    hift = config.hift
    assert hift["sampling_rate"] == 24000 and hift["base_channels"] == 512 and hift["nb_harmonics"] == 8
    assert tuple(hift["upsample_rates"]) == PUBLISHED_UPSAMPLE_RATES
    assert tuple(hift["upsample_kernel_sizes"]) == PUBLISHED_UPSAMPLE_KERNEL_SIZES
    assert tuple(hift["resblock_kernel_sizes"]) == PUBLISHED_RESBLOCK_KERNEL_SIZES
    assert tuple(hift["source_resblock_kernel_sizes"]) == PUBLISHED_SOURCE_RESBLOCK_KERNEL_SIZES
    assert tuple(map(tuple, hift["resblock_dilation_sizes"])) == PUBLISHED_DILATIONS
    assert hift["istft_params"] == {"n_fft": 16, "hop_len": 4}
    assert config.f0_predictor == {"num_class": 1, "in_channels": 80, "cond_channels": 512}
    assert config.feat_extractor is not None and config.feat_extractor["hop_size"] == 480


def test_builds_our_modules_from_a_small_variant() -> None:
    """The mapped arguments are accepted by our constructors (widths shrunk so this stays fast)."""
    from voice_triton.cosyvoice2.flow import build_flow

    small = PUBLISHED_YAML.replace("base_channels: 512", "base_channels: 32").replace(
        "cond_channels: 512", "cond_channels: 32"
    )
    small = small.replace("num_mid_blocks: 12", "num_mid_blocks: 1").replace("num_blocks: 6", "num_blocks: 1")
    config = parse_config(small)
    hift = build_hift(config)
    assert hift.upsample_scale == 480
    flow = build_flow(config.flow)
    assert flow.token_mel_ratio == 2 and flow.decoder.estimator.static_chunk_size == 50


def test_nothing_is_executed() -> None:
    document = load_yaml(PUBLISHED_YAML)
    assert document["__set_seed1"] == Node("apply", "random.seed", args=[1986])
    assert document["hifigan"].kwargs["generator"] == document["hift"]
    assert document["data_pipeline"][0] == Node("name", "cosyvoice.dataset.processor.parquet_opener")
    assert document["train_conf"]["optim_conf"]["lr"] == 1e-5


def test_refs_arithmetic_strings_and_overrides() -> None:
    text = "a: 3\nb: !ref <a> * <a> + 1\nc: !ref <d>/x\nd: 'dir'\ne: !ref <f.g>\nf: {g: [1, 2]}\nh: !ref <f[g]>\n"
    document = load_yaml(text, overrides={"a": 4})
    assert document["b"] == 17 and document["c"] == "dir/x" and document["e"] == [1, 2] == document["h"]
    with pytest.raises(ConfigError, match="<missing>"):
        load_yaml("a: !ref <missing>\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_yaml("a: !ref <b>\nb: !ref <a>\n")
    with pytest.raises(ConfigError, match="!include"):
        load_yaml("a: !include other.yaml\n")
    # An expression that is not arithmetic is substituted, never evaluated.
    assert load_yaml("a: '__import__(\"os\")'\nb: !ref <a>.system\n")["b"] == '__import__("os").system'


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("cosyvoice.flow.decoder.CausalConditionalDecoder", "cosyvoice.flow.DiT.dit.DiT", "flow.decoder.estimator"),
        ("cosyvoice.hifigan.generator.HiFTGenerator", "cosyvoice.hifigan.generator.CausalHiFTGenerator", "hift"),
        ("cosyvoice.llm.llm.Qwen2LM", "cosyvoice.llm.llm.TransformerLM", "llm"),
        ("use_cnn_module: False", "use_cnn_module: True", "flow.encoder.use_cnn_module"),
        ("solver: 'euler'", "solver: 'midpoint'", "flow.decoder.cfm_params.solver"),
        ("output_type: 'mel'", "output_type: 'linear'", "flow.output_type"),
        ("lrelu_slope: 0.1", "lrelu_slope: 0.1\n    conv_pre_look_right: 4", "hift.conv_pre_look_right"),
        ("top_k: 25", "top_k: 25\n        use_ras: True", None),  # sampling arguments are data, passed on
    ],
)
def test_refuses_what_is_not_implemented(old: str, new: str, key: str | None) -> None:
    assert old in PUBLISHED_YAML
    text = PUBLISHED_YAML.replace(old, new, 1)
    if key is None:
        parse_config(text)
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(text)
