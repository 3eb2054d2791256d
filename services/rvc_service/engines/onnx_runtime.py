"""ONNX Runtime backend for CPU hosts: the content encoder and the synthesizer's prior and decoder, exported from the
loaded torch modules (so every checkpoint format torch loads works) and run by ONNX Runtime.

Why: on CPU the same graphs run 1.3-1.4x faster in ONNX Runtime than in eager torch (fused conv + activation, no
Python per layer), and the exported graph is what a CPU deployment of RVC typically ships. The torch path stays for
CUDA. Exports are cached on disk under a key of the weights, the graph's role and the torch/ORT versions, so a
restart loads in seconds.

The random numbers stay in torch (`run_synthesis` draws them in the reference order and passes them in as inputs),
so the ONNX path gives the torch path's audio for the same seed, within float rounding (tested).

Cancellation: a run cannot be interrupted between layers as the torch hooks do; instead one watcher thread polls the
`should_stop` of every run in flight every few milliseconds and sets ORT's terminate flag, and the run then raises
JobCancelled.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..cancel import ShouldStop, check_stop
from .content import OUTPUT_LAYER, ContentEncoder, fairseq_to_hf
from .params import ModelLoadError, public_reason
from .synthesizer import DecodeWindow, SynthConfig, Synthesizer, run_synthesis

log = logging.getLogger(__name__)

OPSET = 17  # ScatterElements with reduction (relative attention) needs >= 16


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voice-rvc" / "onnx"


@dataclass(frozen=True, slots=True)
class OnnxSettings:
    """Where exports are cached and how each session runs. `threads` is ONNX Runtime's intra-op thread count per
    session (0: ORT's default, one per core); the pool passes its threads-per-worker. `int8_content` quantizes the
    content encoder's matrix products to int8 (dynamic quantization): faster where the CPU has int8 dot products,
    at a small cost in feature accuracy (measured by the tests and the benchmark)."""

    cache_dir: Path
    threads: int = 0
    int8_content: bool = False


# ------------------------------------------------------------------------------------------------ running graphs


class _TerminateWatch:
    """One daemon thread for the whole process: sets `terminate` on the RunOptions of every ORT run whose
    `should_stop()` turned true. Idle (blocked on a condition) while no run is watched."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self._runs: dict[int, tuple[Any, ShouldStop]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, should_stop: ShouldStop | None) -> Iterator[Any]:
        import onnxruntime as ort

        options = ort.RunOptions()
        if should_stop is None:
            yield options
            return
        key = id(options)
        with self._cond:
            self._runs[key] = (options, should_stop)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ort-cancel-watch", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield options
        finally:
            with self._cond:
                del self._runs[key]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._runs:
                    self._cond.wait()
                runs = list(self._runs.values())
            for options, should_stop in runs:
                if should_stop():
                    options.terminate = True
            time.sleep(self.interval_s)


_WATCH = _TerminateWatch()


class OnnxGraph:
    """One ONNX Runtime session. `run` is thread-safe; a run whose `should_stop()` turns true raises JobCancelled."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads would otherwise spin for a while after every run, stealing the other workers' cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path

    def run(self, feeds: dict[str, NDArray[Any]], should_stop: ShouldStop | None = None) -> NDArray[np.float32]:
        """The graph's first output; every graph here (prior, decoder, content encoder) outputs float32."""
        check_stop(should_stop)
        with _WATCH.watching(should_stop) as options:
            try:
                out: NDArray[np.float32] = self.session.run(None, feeds, options)[0]
                return out
            except Exception:
                check_stop(should_stop)  # terminated on purpose: report the cancel, not ORT's message
                raise


# ---------------------------------------------------------------------------------------------------- exporting


def _weights_digest(modules: Sequence[nn.Module], *extra: str) -> str:
    h = hashlib.sha256()
    for part in (*extra, torch.__version__, _ort_version(), str(OPSET)):
        h.update(part.encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def export_cached(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: Path,
) -> Path:
    """Export `module` to `path` unless a previous export is there. Written to a temporary name and renamed, so a
    crash or a concurrent process never leaves a half-written file under the final name."""
    if path.is_file():
        return path
    # The exporter restores the wrapper's train/eval mode afterwards, recursively: a wrapper left in its default
    # training mode would switch the wrapped (shared) torch model into training mode, dropout on.
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(tmp),
                input_names=input_names,
                output_names=["out"],
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency, handles our data-dependent shapes
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _quantized(path: Path) -> Path:
    """The int8 dynamically quantized sibling of an export (MatMul weights per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(path.stem + ".int8.onnx")
    if out.is_file():
        return out
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _export_error(what: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(f"{what} could not be prepared for ONNX Runtime ({public_reason(exc)}); use --backend torch")


# ------------------------------------------------------------------------------------------------- synthesizer


class _Prior(nn.Module):
    def __init__(self, net: Synthesizer) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        return self.net.prior(phone, pitch, lengths, g, eps)


class _PriorNoPitch(_Prior):
    def forward(  # type: ignore[override]
        self, phone: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        return self.net.prior(phone, None, lengths, g, eps)


class _Decoder(nn.Module):
    def __init__(self, net: Synthesizer) -> None:
        super().__init__()
        self.dec = net.dec

    def forward(self, z: torch.Tensor, har: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        audio: torch.Tensor = self.dec(z, har, g)
        return audio


class _DecoderNoPitch(_Decoder):
    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        audio: torch.Tensor = self.dec(z, None, g)
        return audio


class OnnxSynthesizer:
    """The synthesizer with its prior (text encoder + flow) and decoder in ONNX Runtime; the speaker embedding and
    the NSF excitation (cheap, float64 phase, random) stay in torch. Same `infer` as Synthesizer."""

    def __init__(self, net: Synthesizer, settings: OnnxSettings, label: str) -> None:
        self.cfg: SynthConfig = net.cfg
        self.use_f0 = net.use_f0
        self._hop = net.hop
        # Keep only the small torch parts; the exported graphs hold the rest.
        self.emb_g = net.emb_g
        self.m_source = net.dec.m_source
        self._weight_bytes: int = sum(t.numel() * t.element_size() for t in net.state_dict().values())
        self._calls = threading.local()
        digest = _weights_digest([net], "synthesizer", repr(self.cfg), str(self.use_f0))
        frames, dim = 40, net.enc_p.emb_phone.in_features
        phone = torch.randn(1, frames, dim)
        pitch = torch.randint(1, 255, (1, frames))
        lengths = torch.tensor([frames])
        g = net.speaker(torch.tensor([0]))
        eps = torch.randn(1, self.cfg.inter_channels, frames)
        z = torch.randn(1, self.cfg.inter_channels, frames)
        har = 0.1 * torch.randn(1, 1, frames * self._hop)
        t = {1: "frames"}
        try:
            if self.use_f0:
                prior_path = export_cached(
                    _Prior(net),
                    (phone, pitch, lengths, g, eps),
                    ["phone", "pitch", "lengths", "g", "eps"],
                    {"phone": t, "pitch": t, "eps": {2: "frames"}},
                    settings.cache_dir / f"prior-{digest}.onnx",
                )
                decoder_path = export_cached(
                    _Decoder(net),
                    (z, har, g),
                    ["z", "har", "g"],
                    {"z": {2: "frames"}, "har": {2: "samples"}},
                    settings.cache_dir / f"decoder-{digest}.onnx",
                )
            else:
                prior_path = export_cached(
                    _PriorNoPitch(net),
                    (phone, lengths, g, eps),
                    ["phone", "lengths", "g", "eps"],
                    {"phone": t, "eps": {2: "frames"}},
                    settings.cache_dir / f"prior-{digest}.onnx",
                )
                decoder_path = export_cached(
                    _DecoderNoPitch(net),
                    (z, g),
                    ["z", "g"],
                    {"z": {2: "frames"}},
                    settings.cache_dir / f"decoder-{digest}.onnx",
                )
            self._prior = OnnxGraph(prior_path, settings.threads)
            self._decoder = OnnxGraph(decoder_path, settings.threads)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise _export_error(label, exc) from exc

    @property
    def hop(self) -> int:
        return self._hop

    @property
    def memory_bytes(self) -> int:
        return self._weight_bytes

    @torch.inference_mode()
    def infer(
        self,
        phone: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        nsff0: torch.Tensor | None,
        sid: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise_scale: float = 0.66666,
        window: DecodeWindow | None = None,
        should_stop: ShouldStop | None = None,
    ) -> torch.Tensor:
        self._calls.should_stop = should_stop
        try:
            return run_synthesis(self, phone, lengths, pitch, nsff0, sid, generator, noise_scale, window)
        finally:
            self._calls.should_stop = None

    def speaker(self, sid: torch.Tensor) -> torch.Tensor:
        emb: torch.Tensor = self.emb_g(sid)
        return emb.unsqueeze(-1)

    def excitation(self, nsff0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        assert self.m_source is not None
        har: torch.Tensor = self.m_source(nsff0, self._hop, generator)
        return har

    def prior(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor, g: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        feeds = {"phone": _np(phone), "lengths": _np(lengths.long()), "g": _np(g), "eps": _np(eps)}
        if self.use_f0:
            assert pitch is not None
            feeds["pitch"] = _np(pitch.long())
        return torch.from_numpy(self._prior.run(feeds, getattr(self._calls, "should_stop", None)))

    def decode(self, z: torch.Tensor, har: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        feeds = {"z": _np(z), "g": _np(g)}
        if self.use_f0:
            assert har is not None
            feeds["har"] = _np(har)
        return torch.from_numpy(self._decoder.run(feeds, getattr(self._calls, "should_stop", None)))


def _np(t: torch.Tensor) -> NDArray[Any]:
    """A tensor as numpy for a graph input (float64 becomes float32; other dtypes stay)."""
    out = t.detach().cpu().contiguous().numpy()
    return out if out.dtype != np.float64 else out.astype(np.float32)


# --------------------------------------------------------------------------------------------- content encoder


class _ContentGraph(nn.Module):
    """audio [1, samples] -> the features a model version consumes (ContentEncoder._extract, minus the cancel hooks'
    thread-local, which is empty during export)."""

    def __init__(self, encoder: ContentEncoder, version: str) -> None:
        super().__init__()
        # fairseq's model is exported through its transformers twin (see fairseq_to_hf).
        self.model = encoder.model if encoder.kind == "hf" else fairseq_to_hf(encoder.model)
        self.final_proj = encoder.final_proj
        self.version = version

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        layer = OUTPUT_LAYER[self.version]
        hidden = self.model(audio, output_hidden_states=True).hidden_states
        feats: torch.Tensor = hidden[min(layer, len(hidden) - 1)]
        if self.version == "v1":
            assert self.final_proj is not None
            feats = self.final_proj(feats)
        return feats


class OnnxContentEncoder:
    """A ContentEncoder whose `extract` runs in ONNX Runtime: one graph per model version (v1 reads layer 9 through
    final_proj, v2 layer 12), exported on first use of that version and cached."""

    def __init__(self, encoder: ContentEncoder, settings: OnnxSettings) -> None:
        self.torch_encoder = encoder
        self.kind = encoder.kind
        self.device = encoder.device
        self.path = encoder.path
        self.final_proj = encoder.final_proj
        self.settings = settings
        self._graphs: dict[str, OnnxGraph] = {}
        self._lock = threading.Lock()
        self._digest = _weights_digest([encoder.model], "content", encoder.kind)

    @property
    def num_parameters(self) -> int:
        return self.torch_encoder.num_parameters

    @property
    def memory_bytes(self) -> int:
        return self.torch_encoder.memory_bytes

    def prepare(self, version: str) -> None:
        """Export (or load from the cache) the graph for `version` now rather than on the first request."""
        self._graph(version)

    def _graph(self, version: str) -> OnnxGraph:
        with self._lock:
            graph = self._graphs.get(version)
            if graph is not None:
                return graph
            if version == "v1" and self.final_proj is None:
                raise ModelLoadError("this content encoder has no final_proj, which v1 models need")
            name = f"content-{self._digest}-{version}.onnx"
            try:
                path = export_cached(
                    _ContentGraph(self.torch_encoder, version),
                    (torch.randn(1, 16000),),
                    ["audio"],
                    {"audio": {1: "samples"}},
                    self.settings.cache_dir / name,
                )
                if self.settings.int8_content:
                    path = _quantized(path)
                graph = self._graphs[version] = OnnxGraph(path, self.settings.threads)
            except ModelLoadError:
                raise
            except Exception as exc:
                raise _export_error(f"content encoder {self.path.name!r}", exc) from exc
            return graph

    def extract(self, audio: torch.Tensor, version: str, should_stop: ShouldStop | None = None) -> torch.Tensor:
        """Same contract as ContentEncoder.extract: audio [1, samples] at 16 kHz -> [1, frames, 256 or 768]."""
        graph = self._graph(version)
        return torch.from_numpy(graph.run({"audio": _np(audio.float())}, should_stop))


__all__ = ["OnnxContentEncoder", "OnnxGraph", "OnnxSettings", "OnnxSynthesizer", "default_cache_dir"]
