"""The independent CosyVoice2 reference for parity tests: upstream CosyVoice and Matcha model code as bundled by
`cosyvoice2-eu` 0.2.8 (Apache-2.0), installed for tests only (`pip install --no-deps -r requirements-parity.txt`).

Only the model classes are imported, never the package's CLI, front end or training code. Two import chains of the
reference would drag in what the model classes never use at run time, so they are replaced by stub modules in
`sys.modules` before anything of the reference is imported:

- `cosyvoice.utils.file_utils` (STUB): upstream imports torchaudio and calls `logging.basicConfig(level=DEBUG)` at
  import, which would reconfigure the test process's root logger. The model classes take only `logging` from it (the
  stdlib module); the TensorRT/vLLM export helpers that `cosyvoice.cli.model` imports by name raise if called.
- `matcha.utils` and `matcha.utils.pylogger` (STUB): the package __init__ imports hydra, lightning, rich, gdown,
  matplotlib and wget; Matcha's flow matching takes only `get_pylogger`, here the stdlib `logging.getLogger`.

If the reference or one of its real dependencies (diffusers, conformer, einops, omegaconf, scipy, transformers) cannot
be imported, the calling test is skipped with the reason. Usage:

    from tests.cosyvoice2.reference import reference_llm
    ref = reference_llm()            # skips the test (or module, at module level) when unavailable
    model = ref.Qwen2LM(...)
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from typing import Any, NamedTuple

import pytest

_INSTALL = "pip install --no-deps -r requirements-parity.txt"


class HiftReference(NamedTuple):
    """cosyvoice.hifigan: the HiFT vocoder and its F0 predictor (hift.pt's module tree)."""

    HiFTGenerator: type
    ConvRNNF0Predictor: type


class FlowReference(NamedTuple):
    """cosyvoice.flow + cosyvoice.transformer: CosyVoice2's flow (flow.pt's module tree)."""

    CausalMaskedDiffWithXvec: type
    UpsampleConformerEncoder: type
    CausalConditionalCFM: type
    ConditionalDecoder: type
    # The estimator class the current published cosyvoice2.yaml names (ConditionalDecoder with causal blocks).
    CausalConditionalDecoder: type


class LlmReference(NamedTuple):
    """cosyvoice.llm: CosyVoice2's LM (llm.pt's module tree) and its Qwen2 backbone wrapper."""

    Qwen2LM: type
    Qwen2Encoder: type


def _unused(name: str) -> Any:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"{name} is stubbed out by tests/cosyvoice2/reference.py (not needed for parity)")

    return fail


def _install_stubs() -> None:
    """Put the stub modules in place (once); see the module docstring for why each one exists."""
    if "cosyvoice.utils.file_utils" not in sys.modules:
        stub = types.ModuleType("cosyvoice.utils.file_utils")
        stub.__doc__ = "STUB (tests/cosyvoice2/reference.py): upstream's logging module without basicConfig."
        stub.logging = logging  # type: ignore[attr-defined]
        for name in ("convert_onnx_to_trt", "export_cosyvoice2_vllm", "load_wav", "read_lists", "read_json_lists"):
            setattr(stub, name, _unused(name))
        sys.modules[stub.__name__] = stub
    if "matcha.utils" not in sys.modules:
        spec = importlib.util.find_spec("matcha")
        package = types.ModuleType("matcha.utils")
        package.__doc__ = "STUB (tests/cosyvoice2/reference.py): matcha.utils without its hydra/lightning imports."
        # A package path, so a real leaf module (e.g. matcha.utils.model) still imports if a test wants one.
        package.__path__ = [f"{location}/utils" for location in (spec.submodule_search_locations or [])] if spec else []
        pylogger = types.ModuleType("matcha.utils.pylogger")
        pylogger.__doc__ = "STUB (tests/cosyvoice2/reference.py): get_pylogger is logging.getLogger."
        pylogger.get_pylogger = logging.getLogger  # type: ignore[attr-defined]
        package.pylogger = pylogger  # type: ignore[attr-defined]
        package.get_pylogger = logging.getLogger  # type: ignore[attr-defined]
        sys.modules["matcha.utils"] = package
        sys.modules["matcha.utils.pylogger"] = pylogger


def import_reference(module: str) -> types.ModuleType:
    """Import one module of the reference (e.g. "cosyvoice.utils.mask") behind the stubs; skip if unavailable."""
    for top in ("cosyvoice", "matcha"):
        if importlib.util.find_spec(top) is None:
            pytest.skip(f"CosyVoice2 reference not installed (no {top!r}; {_INSTALL})", allow_module_level=True)
    _install_stubs()
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # a missing or incompatible dependency of the reference
        pytest.skip(f"CosyVoice2 reference {module} cannot be imported: {exc!r} ({_INSTALL})", allow_module_level=True)


def reference_hift() -> HiftReference:
    generator = import_reference("cosyvoice.hifigan.generator")
    f0 = import_reference("cosyvoice.hifigan.f0_predictor")
    return HiftReference(generator.HiFTGenerator, f0.ConvRNNF0Predictor)


def reference_flow() -> FlowReference:
    flow = import_reference("cosyvoice.flow.flow")
    encoder = import_reference("cosyvoice.transformer.upsample_encoder")
    matching = import_reference("cosyvoice.flow.flow_matching")
    decoder = import_reference("cosyvoice.flow.decoder")
    return FlowReference(
        flow.CausalMaskedDiffWithXvec,
        encoder.UpsampleConformerEncoder,
        matching.CausalConditionalCFM,
        decoder.ConditionalDecoder,
        decoder.CausalConditionalDecoder,
    )


def reference_llm() -> LlmReference:
    llm = import_reference("cosyvoice.llm.llm")
    return LlmReference(llm.Qwen2LM, llm.Qwen2Encoder)
