"""Read a published `cosyvoice2.yaml` without executing it.

The checkpoint's yaml is HyperPyYAML: `!new:module.Class` builds an object from the mapping under it, `!name:module.f`
makes a partial, `!apply:module.f` calls a function at load time and `!ref <key>` points at another entry (with
`<a> * <b>` arithmetic and string substitution). Upstream loads it with `hyperpyyaml.load_hyperpyyaml`, which imports
and runs every named callable: loading a checkpoint's yaml that way runs whatever code the file names. Here a
restricted PyYAML loader turns the tagged nodes into inert `Node` records (the dotted name and its arguments),
resolves `!ref` afterwards, and `parse_config` maps the three model sections to the arguments of our own classes:

    llm   cosyvoice.llm.llm.Qwen2LM                  -> LlmConfig (speech_token_size, sizes, mix ratio, sampling)
    flow  cosyvoice.flow.flow.CausalMaskedDiffWithXvec -> `build_flow` kwargs (the shape of `flow.PUBLISHED_FLOW`)
    hift  cosyvoice.hifigan.generator.HiFTGenerator  -> `HiFTGenerator` kwargs, plus its F0 predictor's kwargs

Only the published architecture is accepted: another class, or an option our modules do not implement, is refused
with a `ConfigError` naming the key. Training-only options (losses, dynamic chunk training, seeds) are accepted and
dropped. The rest of the file (data pipeline, GAN and training sections) is parsed but not interpreted.
"""

from __future__ import annotations

import ast
import inspect
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "cosyvoice2.yaml"


class ConfigError(ValueError):
    """The yaml is malformed, or names a class or option this implementation does not build."""


@dataclass(frozen=True)
class Node:
    """A `!new:`, `!name:` or `!apply:` node as data: `kind` is "new", "name" or "apply", `target` the dotted name.

    `kwargs` holds a mapping node's entries; `args` a sequence node's items (`!apply:random.seed [1986]`)."""

    kind: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class _Ref:
    """An unresolved `!ref` expression, e.g. "<chunk_size> * <token_mel_ratio>"."""

    expression: str
    line: int


class _Loader(yaml.SafeLoader):
    """SafeLoader plus HyperPyYAML's tags as inert records; any other tag is an error."""


# HyperPyYAML resolves `1e-06` as a float (YAML 1.1's float pattern wants a dot); the published cfm_params has it.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _tagged(kind: str) -> Callable[[_Loader, str, yaml.Node], Node]:
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> Node:
        if not re.fullmatch(r"[A-Za-z_][\w.]*", suffix):
            raise ConfigError(f"line {node.start_mark.line + 1}: !{kind}:{suffix} is not a dotted name")
        if isinstance(node, yaml.MappingNode):
            return Node(kind, suffix, kwargs=loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Node(kind, suffix, args=loader.construct_sequence(node, deep=True))
        value = loader.construct_scalar(node)
        return Node(kind, suffix, args=[value] if value not in ("", None) else [])

    return construct


def _ref(loader: _Loader, node: yaml.Node) -> _Ref:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"line {node.start_mark.line + 1}: !ref takes a scalar like <name>")
    return _Ref(str(loader.construct_scalar(node)), node.start_mark.line + 1)


def _unsupported(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    # !copy, !tuple, !include, !module, !applyref ...: HyperPyYAML tags no published CosyVoice2 yaml uses.
    raise ConfigError(f"line {node.start_mark.line + 1}: tag !{suffix} is not supported")


for _kind in ("new", "name", "apply"):
    _Loader.add_multi_constructor(f"!{_kind}:", _tagged(_kind))
_Loader.add_constructor("!ref", _ref)
_Loader.add_multi_constructor("!", _unsupported)

_REF = re.compile(r"<([^<>]+)>")
_ARITHMETIC: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _arithmetic(text: str) -> Any:
    """Evaluate +-*/ arithmetic on number literals; anything else raises ValueError (never `eval`)."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.operand))
        raise ValueError(text)

    try:
        return value(ast.parse(text.strip(), mode="eval").body)
    except SyntaxError as exc:
        raise ValueError(text) from exc


def _lookup(root: Mapping[str, Any], name: str, line: int) -> Any:
    """`a`, `a.b` or `a[b]` in the document's top level (HyperPyYAML's reference syntax)."""
    current: Any = root
    for part in re.findall(r"[^.\[\]]+", name):
        if isinstance(current, Node):
            current = current.kwargs
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise ConfigError(f"line {line}: !ref <{name}> names no entry")
    return current


def _resolve(value: Any, root: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Replace every `_Ref` under `value` by what it points at (refs to refs included; cycles refused)."""
    if isinstance(value, _Ref):
        names = _REF.findall(value.expression)
        if not names:
            raise ConfigError(f"line {value.line}: !ref {value.expression!r} names no <key>")
        for name in names:
            if name in seen:
                raise ConfigError(f"line {value.line}: !ref <{name}> refers to itself")
        targets = {name: _resolve(_lookup(root, name, value.line), root, (*seen, name)) for name in names}
        if _REF.fullmatch(value.expression.strip()):
            return targets[names[0]]  # a lone reference keeps the target's type (a number, a list, a Node)
        text = _REF.sub(lambda m: str(targets[m.group(1)]), value.expression)
        try:
            return _arithmetic(text)  # "<chunk_size> * <token_mel_ratio>" -> 50
        except ValueError:
            return text  # "<dir>/file" -> a string, as HyperPyYAML substitutes
    if isinstance(value, Node):
        return Node(value.kind, value.target, _resolve(value.kwargs, root, seen), _resolve(value.args, root, seen))
    if isinstance(value, dict):
        return {k: _resolve(v, root, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, seen) for v in value]
    return value


def load_yaml(text: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The document as plain data with `Node` records and every `!ref` resolved. Nothing named in it is imported or
    called. `overrides` replace top-level entries before references are resolved (upstream overrides
    `qwen_pretrain_path` this way)."""
    try:
        document = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no python/ tags
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError("the yaml's top level is not a mapping")
    document.update(overrides or {})
    return _resolve(document, document)


# -- mapping the model sections onto our classes ---------------------------------------------------------------------

_LLM_CLASS = "cosyvoice.llm.llm.Qwen2LM"
_QWEN2_ENCODER_CLASS = "cosyvoice.llm.llm.Qwen2Encoder"
_SAMPLING = "cosyvoice.utils.common.ras_sampling"
_FLOW_CLASS = "cosyvoice.flow.flow.CausalMaskedDiffWithXvec"
_ENCODER_CLASS = "cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder"
_CFM_CLASS = "cosyvoice.flow.flow_matching.CausalConditionalCFM"
_ESTIMATOR_CLASS = "cosyvoice.flow.decoder.CausalConditionalDecoder"
_HIFT_CLASS = "cosyvoice.hifigan.generator.HiFTGenerator"
_F0_CLASS = "cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor"
_MEL_FUNCTION = "matcha.utils.audio.mel_spectrogram"

# Options that only matter for training (losses, dynamic-chunk training): accepted, dropped.
_LLM_TRAINING = {"length_normalized_loss", "lsm_weight"}
_FLOW_TRAINING = {"only_mask_loss", "encoder_conf", "decoder_conf", "mel_feat_conf"}
_ENCODER_TRAINING = {"use_dynamic_chunk", "use_dynamic_left_chunk", "gradient_checkpointing"}
_CFM_TRAINING = {"training_cfg_rate", "reg_loss_type"}
_CFM_INFERENCE = {"sigma_min", "t_scheduler", "inference_cfg_rate"}
# Upstream arguments that would select other architectures; only the published value is built.
_FLOW_FIXED: dict[str, Any] = {"output_type": "mel"}
_CFM_FIXED: dict[str, Any] = {"solver": "euler"}


@dataclass(frozen=True)
class LlmConfig:
    """The `llm` section. `CosyVoice2LM` takes `speech_token_size`; the Qwen2 shape comes from CosyVoice-BlankEN."""

    speech_token_size: int
    llm_input_size: int
    llm_output_size: int
    mix_ratio: tuple[int, int]  # text : speech tokens in the text-in streaming interleave (published 5 : 15)
    sampling: dict[str, Any]  # ras_sampling's arguments (top_p, top_k, win_size, tau_r)

    def check_hidden_size(self, hidden_size: int) -> None:
        """Our LM feeds Qwen2's hidden states straight to llm_decoder: both yaml sizes must be its hidden size."""
        for key in ("llm_input_size", "llm_output_size"):
            if getattr(self, key) != hidden_size:
                raise ConfigError(f"llm.{key}={getattr(self, key)} differs from the Qwen2 hidden size {hidden_size}")


@dataclass(frozen=True)
class CosyVoice2Config:
    """What serving needs of a cosyvoice2.yaml; see the module docstring."""

    sample_rate: int
    token_frame_rate: int  # speech tokens per second (the flow's input_frame_rate)
    llm: LlmConfig
    flow: dict[str, Any]  # build_flow(flow)
    hift: dict[str, Any]  # HiFTGenerator(**hift, f0_predictor=ConvRNNF0Predictor(**f0_predictor))
    f0_predictor: dict[str, Any]
    feat_extractor: dict[str, Any] | None  # the prompt mel's mel_spectrogram arguments, when the yaml has them
    document: dict[str, Any] = field(repr=False, compare=False)  # everything, resolved, for the other sections

    @property
    def token_mel_ratio(self) -> int:
        return int(self.flow["token_mel_ratio"])


def _node(value: Any, key: str, target: str, kind: str = "new") -> dict[str, Any]:
    """The kwargs of `value`, which must be a `!{kind}:{target}` node."""
    if not isinstance(value, Node) or value.kind != kind:
        raise ConfigError(f"{key}: expected !{kind}:{target}, got {value!r}")
    if value.target != target:
        raise ConfigError(f"{key}: {value.target} is not implemented (only {target})")
    if value.args:
        raise ConfigError(f"{key}: positional arguments are not supported")
    return dict(value.kwargs)


def _take(
    kwargs: dict[str, Any],
    key: str,
    accepted: Collection[str],
    training: Collection[str] = (),
    fixed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """kwargs without the training options, after checking the fixed ones; an unknown option is refused."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if fixed and name in fixed:
            if value != fixed[name]:
                raise ConfigError(f"{key}.{name}={value!r} is not implemented (only {fixed[name]!r})")
        elif name in training:
            continue
        elif name in accepted:
            out[name] = value
        else:
            raise ConfigError(f"{key}.{name} is not an option this implementation supports")
    return out


def _parameters(function: Callable[..., Any], *excluded: str) -> set[str]:
    """The keyword parameters of one of our constructors: the options we implement, by construction."""
    return set(inspect.signature(function).parameters) - {"self", *excluded}


def _section(document: Mapping[str, Any], key: str) -> Any:
    if key not in document:
        raise ConfigError(f"the yaml has no `{key}` section")
    return document[key]


def _llm(document: Mapping[str, Any]) -> LlmConfig:
    kwargs = _node(_section(document, "llm"), "llm", _LLM_CLASS)
    known = {"llm_input_size", "llm_output_size", "speech_token_size", "mix_ratio", "llm", "sampling"}
    kwargs = _take(kwargs, "llm", known, _LLM_TRAINING)
    # The backbone's pretrain_path is ignored: the Qwen2 shape is read from the checkpoint's CosyVoice-BlankEN/.
    _node(kwargs.get("llm"), "llm.llm", _QWEN2_ENCODER_CLASS)
    sampling = _node(kwargs.get("sampling"), "llm.sampling", _SAMPLING, kind="name")
    for name in ("llm_input_size", "llm_output_size", "speech_token_size"):
        if not isinstance(kwargs.get(name), int):
            raise ConfigError(f"llm.{name} must be an integer, got {kwargs.get(name)!r}")
    mix = kwargs.get("mix_ratio", [5, 15])
    if not (isinstance(mix, list) and len(mix) == 2 and all(isinstance(n, int) and n > 0 for n in mix)):
        raise ConfigError(f"llm.mix_ratio must be two positive integers, got {mix!r}")
    return LlmConfig(
        speech_token_size=kwargs["speech_token_size"],
        llm_input_size=kwargs["llm_input_size"],
        llm_output_size=kwargs["llm_output_size"],
        mix_ratio=(mix[0], mix[1]),
        sampling=sampling,
    )


def _flow(document: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """build_flow's kwargs and the token frame rate."""
    from voice_triton.cosyvoice2.flow import _PUBLISHED_ENCODER_CHOICES, CausalMaskedDiffWithXvec
    from voice_triton.cosyvoice2.flow_decoder import CausalConditionalDecoder
    from voice_triton.cosyvoice2.flow_encoder import UpsampleConformerEncoder

    kwargs = _node(_section(document, "flow"), "flow", _FLOW_CLASS)
    top = _parameters(CausalMaskedDiffWithXvec.__init__) | {"input_frame_rate"}
    flow = _take(kwargs, "flow", top, _FLOW_TRAINING, _FLOW_FIXED)
    rate = flow.pop("input_frame_rate", 25)

    # pre_lookahead_len is the flow's option (build_flow hands it to the encoder); our num_up_blocks and
    # upsample_stride are constants upstream, not yaml options.
    enc_options = _parameters(
        UpsampleConformerEncoder.__init__, "pre_lookahead_len", "num_up_blocks", "upsample_stride"
    )
    encoder = _node(flow.get("encoder"), "flow.encoder", _ENCODER_CLASS)
    flow["encoder"] = _take(encoder, "flow.encoder", enc_options, _ENCODER_TRAINING, _PUBLISHED_ENCODER_CHOICES)

    decoder = _node(flow.get("decoder"), "flow.decoder", _CFM_CLASS)
    decoder = _take(decoder, "flow.decoder", {"in_channels", "n_spks", "spk_emb_dim", "cfm_params", "estimator"})
    cfm = decoder.get("cfm_params", {})
    if isinstance(cfm, Node):  # published: !new:omegaconf.DictConfig {content: {...}}
        cfm = _node(cfm, "flow.decoder.cfm_params", "omegaconf.DictConfig").get("content", {})
    if not isinstance(cfm, dict):
        raise ConfigError(f"flow.decoder.cfm_params must be a mapping, got {cfm!r}")
    decoder["cfm_params"] = _take(cfm, "flow.decoder.cfm_params", _CFM_INFERENCE, _CFM_TRAINING, _CFM_FIXED)
    estimator = _node(decoder.get("estimator"), "flow.decoder.estimator", _ESTIMATOR_CLASS)
    decoder["estimator"] = _take(estimator, "flow.decoder.estimator", _parameters(CausalConditionalDecoder.__init__))
    flow["decoder"] = decoder
    return flow, int(rate)


def _hift(document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from voice_triton.cosyvoice2.hift import ConvRNNF0Predictor, HiFTGenerator

    kwargs = _node(_section(document, "hift"), "hift", _HIFT_CLASS)
    hift = _take(kwargs, "hift", _parameters(HiFTGenerator.__init__))
    if "f0_predictor" in hift:
        predictor = _node(hift.pop("f0_predictor"), "hift.f0_predictor", _F0_CLASS)
        predictor = _take(predictor, "hift.f0_predictor", _parameters(ConvRNNF0Predictor.__init__))
    else:  # upstream's default predictor is the published one on the generator's widths
        predictor = {"in_channels": hift.get("in_channels", 80), "cond_channels": hift.get("base_channels", 512)}
    return hift, predictor


def parse_config(text: str, overrides: Mapping[str, Any] | None = None) -> CosyVoice2Config:
    """Map a cosyvoice2.yaml text onto our classes' arguments; `ConfigError` names what is not implemented."""
    document = load_yaml(text, overrides)
    llm = _llm(document)
    flow, rate = _flow(document)
    hift, predictor = _hift(document)
    sample_rate = hift.get("sampling_rate", document.get("sample_rate", 24000))
    feat = document.get("feat_extractor")
    feat_extractor = _node(feat, "feat_extractor", _MEL_FUNCTION, kind="name") if feat is not None else None
    return CosyVoice2Config(
        sample_rate=int(sample_rate),
        token_frame_rate=rate,
        llm=llm,
        flow=flow,
        hift=hift,
        f0_predictor=predictor,
        feat_extractor=feat_extractor,
        document=document,
    )


def read_config(directory: Path) -> CosyVoice2Config:
    """parse_config of `<directory>/cosyvoice2.yaml`."""
    return parse_config((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))


def build_hift(config: CosyVoice2Config) -> Any:
    """Our HiFTGenerator with the yaml's arguments (random weights; load hift.pt through `hift_state_dict`)."""
    from voice_triton.cosyvoice2.hift import ConvRNNF0Predictor, HiFTGenerator

    return HiFTGenerator(**config.hift, f0_predictor=ConvRNNF0Predictor(**config.f0_predictor))
