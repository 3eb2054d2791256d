"""The Retrieval-based Voice Conversion inference pipeline on a WebUI `.pth` checkpoint.

Per call: resample to 16 kHz, high-pass (48 Hz), reflect-pad, F0 on the whole padded input, then per segment (long
inputs split at quiet points): content features -> optional index blend -> x2 to the 100 Hz F0 frame rate ->
protect unvoiced frames -> synthesizer. Finally the loudness envelope mix and resampling to the requested rate.

A `should_stop()` callable (the pool's CancelToken) is checked between those steps, per segment, inside the F0
estimators' loops and between the synthesizer's stages; once true the call raises JobCancelled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import signal

from ..cancel import ShouldStop, check_stop
from .content import ContentEncoder
from .f0 import HOP, SR, F0Estimator, coarse_f0, shift_f0
from .index import RetrievalIndex
from .onnx_runtime import OnnxContentEncoder, OnnxSettings, OnnxSynthesizer
from .params import ConversionParams, InvalidParameters, MethodUnavailable, ModelLoadError, public_reason
from .synthesizer import DecodeWindow, Synthesizer, build_synthesizer

_HIGHPASS = signal.butter(N=5, Wn=48, btype="high", fs=SR)

_Scalar = TypeVar("_Scalar", bound=np.generic)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Segmenting, in seconds: reflect padding per side, search span for a quiet cut, cut spacing, longest unsplit
    input. The defaults are the WebUI's for full-precision inference (1/6/38/41)."""

    x_pad: float = 1.0
    x_query: float = 6.0
    x_center: float = 38.0
    x_max: float = 41.0


# ------------------------------------------------------------------------------------------------ pure pipeline steps


def to_16k(audio: NDArray[np.floating[Any]], sr: int) -> NDArray[np.float32]:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:  # (samples, channels) -> mono
        x = x.mean(axis=1)
    return x if sr == SR else soxr.resample(x, sr, SR).astype(np.float32)


def highpass(audio: NDArray[np.float32]) -> NDArray[np.float32]:
    """Zero-phase 48 Hz high-pass: removes rumble and DC that would otherwise leak into the content features."""
    if len(audio) <= 3 * 6:  # filtfilt needs a few samples beyond the filter order
        return audio
    filtered: NDArray[np.float32] = signal.filtfilt(*_HIGHPASS, audio).astype(np.float32)
    return filtered


def protect_features(feats: torch.Tensor, feats0: torch.Tensor, pitchf: torch.Tensor, protect: float) -> torch.Tensor:
    """Where a frame is unvoiced (F0 < 1 Hz) keep `1 - protect` of the original features, so consonants and breaths
    are not smeared by retrieved vectors; voiced frames keep the blended features. protect >= 0.5 disables it."""
    if protect >= 0.5:
        return feats
    w = torch.where(pitchf >= 1, torch.ones_like(pitchf), torch.full_like(pitchf, protect)).unsqueeze(-1)
    return feats * w + feats0 * (1 - w)


def _rms_envelope(x: NDArray[np.float32], sr: int, n_out: int) -> NDArray[np.float64]:
    # RMS over 1 s frames every 0.5 s (centred, zero-padded), linearly stretched to n_out samples.
    frame, hop = sr // 2 * 2, sr // 2
    xp = np.pad(x.astype(np.float64), (frame // 2, frame // 2))
    n_frames = 1 + (len(xp) - frame) // hop if len(xp) >= frame else 1
    c = np.concatenate([[0.0], np.cumsum(xp**2)])
    starts = np.arange(n_frames) * hop
    ends = np.minimum(starts + frame, len(xp))
    rms = np.sqrt((c[ends] - c[starts]) / frame)
    t = torch.from_numpy(rms)[None, None]
    envelope: NDArray[np.float64] = F.interpolate(t, size=n_out, mode="linear").numpy()[0, 0]
    return envelope


def mix_rms(
    source: NDArray[np.float32], source_sr: int, out: NDArray[np.float32], out_sr: int, rate: float
) -> NDArray[np.float32]:
    """Blend loudness envelopes: rate 1 keeps the output's own, rate 0 imposes the source's."""
    if rate >= 1 or len(out) == 0:
        return out
    rms_src = _rms_envelope(source, source_sr, len(out))
    rms_out = np.maximum(_rms_envelope(out, out_sr, len(out)), 1e-6)
    mixed: NDArray[np.float32] = (out * rms_src ** (1 - rate) * rms_out ** (rate - 1)).astype(np.float32)
    return mixed


def split_points(audio: NDArray[np.float32], cfg: PipelineConfig) -> list[int]:
    """Cut positions (in samples of `audio`, 16 kHz) every x_center seconds, each moved to the quietest 10 ms window
    within x_query seconds, when the input is longer than x_max."""
    t_query, t_center, t_max = (int(v * SR) for v in (cfg.x_query, cfg.x_center, cfg.x_max))
    if len(audio) + HOP <= t_max:
        return []
    energy = np.convolve(np.abs(audio), np.ones(HOP, dtype=np.float32), mode="same")
    cuts = []
    for t in range(t_center, len(audio), t_center):
        lo, hi = max(t - t_query, 0), min(t + t_query, len(audio))
        cuts.append(lo + int(np.argmin(energy[lo:hi])))
    return cuts


# ---------------------------------------------------------------------------------------------------------- model


class RvcModel:
    """One loaded RVC voice. `convert` and `convert_block` are thread-safe (weights are read-only)."""

    engine = "rvc"

    def __init__(
        self,
        name: str,
        net: Synthesizer | OnnxSynthesizer,
        version: str,
        content_encoder: ContentEncoder | OnnxContentEncoder,
        f0: F0Estimator,
        index: RetrievalIndex | None,
        device: torch.device,
        info: str = "",
        pipeline: PipelineConfig | None = None,
    ) -> None:
        self.name = name
        self.net = net
        self.version = version
        self.content_encoder = content_encoder
        self.f0 = f0
        self.index = index
        self.device = device
        self.info = info
        self.pipeline = pipeline or PipelineConfig()

    @staticmethod
    def read_checkpoint(path: str | Path, name: str | None = None) -> dict[str, Any]:
        """The checkpoint's contents, checked to be an RVC WebUI model. Raises ModelLoadError naming the model (never
        the file's location): done before anything else is loaded, so an unreadable file is reported as such."""
        p = Path(path)
        label = f"model {name or p.stem!r}"
        try:
            cpt = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = _unreadable_reason(p, exc)
            raise ModelLoadError(f"{label}: checkpoint is not a readable RVC .pth ({reason})") from exc
        if not isinstance(cpt, dict) or "config" not in cpt or "weight" not in cpt:
            raise ModelLoadError(f"{label}: checkpoint is not a readable RVC .pth (it has no 'config' and 'weight')")
        version = str(cpt.get("version", "v1"))
        if version not in ("v1", "v2"):
            raise ModelLoadError(f"{label}: unsupported RVC version {public_reason(repr(version), 40)}")
        return cpt

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        *,
        content_encoder: ContentEncoder | OnnxContentEncoder | str | Path,
        rmvpe_path: str | Path | None = None,
        f0_estimator: F0Estimator | None = None,
        index_path: str | Path | None = None,
        name: str | None = None,
        pipeline: PipelineConfig | None = None,
        onnx: OnnxSettings | None = None,
        half: bool = False,
    ) -> RvcModel:
        """Load a WebUI checkpoint. Pass a shared ContentEncoder/F0Estimator to avoid one copy per voice, and `onnx`
        to run the content encoder and synthesizer in ONNX Runtime (CPU).
        Raises ModelLoadError for anything that makes the files unusable."""
        p = Path(path)
        cpt = cls.read_checkpoint(p, name)
        return cls.from_checkpoint(
            cpt,
            name or p.stem,
            device,
            content_encoder=content_encoder,
            rmvpe_path=rmvpe_path,
            f0_estimator=f0_estimator,
            index_path=index_path,
            pipeline=pipeline,
            onnx=onnx,
            half=half,
        )

    @classmethod
    def from_checkpoint(
        cls,
        cpt: dict[str, Any],
        name: str,
        device: torch.device | str = "cpu",
        *,
        content_encoder: ContentEncoder | OnnxContentEncoder | str | Path,
        rmvpe_path: str | Path | None = None,
        f0_estimator: F0Estimator | None = None,
        index_path: str | Path | None = None,
        pipeline: PipelineConfig | None = None,
        onnx: OnnxSettings | None = None,
        half: bool = False,
    ) -> RvcModel:
        """Build a voice from what ``read_checkpoint`` returned. `half`: fp16 synthesizer weights (the WebUI's
        is_half, for CUDA); pair it with an fp16 content encoder (ContentEncoder.to_half)."""
        dev = torch.device(device)
        version = str(cpt.get("version", "v1"))
        use_f0 = bool(int(cpt.get("f0", 1)))
        try:
            net = build_synthesizer(cpt["config"], cpt["weight"], version, use_f0).to(dev)
        except Exception as exc:
            raise ModelLoadError(f"model {name!r}: weights do not fit its config ({public_reason(exc)})") from exc
        encoder = (
            content_encoder
            if isinstance(content_encoder, ContentEncoder | OnnxContentEncoder)
            else ContentEncoder.load(content_encoder, dev)
        )
        runner: Synthesizer | OnnxSynthesizer = net.half() if half else net
        if onnx is not None:
            if half:
                raise ModelLoadError("fp16 is for the torch backend on CUDA; the ONNX backend runs fp32")
            if dev.type != "cpu":
                raise ModelLoadError("the ONNX backend runs on the CPU; use the torch backend on CUDA")
            runner = OnnxSynthesizer(net, onnx, f"model {name!r}")
            if isinstance(encoder, ContentEncoder):
                encoder = OnnxContentEncoder(encoder, onnx)
            encoder.prepare(version)
        index = RetrievalIndex.load(index_path) if index_path else None
        want_dim = 256 if version == "v1" else 768
        if index is not None and index.dim != want_dim:
            raise ModelLoadError(f"model {name!r}: its index has {index.dim}-dim vectors; {version} needs {want_dim}")
        f0 = f0_estimator or F0Estimator(dev, rmvpe_path)
        return cls(name, runner, version, encoder, f0, index, dev, str(cpt.get("info", "")), pipeline)

    # --------------------------------------------------------------------------------------------- description

    @property
    def sample_rate(self) -> int:
        return self.net.cfg.sr

    @property
    def dtype(self) -> torch.dtype:
        """The synthesizer's precision (float16 with `half`, else float32)."""
        return self.net.emb_g.weight.dtype

    @property
    def uses_f0(self) -> bool:
        return self.net.use_f0

    @property
    def has_index(self) -> bool:
        return self.index is not None

    @property
    def speaker_count(self) -> int:
        return self.net.cfg.spk_embed_dim

    @property
    def memory_bytes(self) -> int:
        """Bytes held by this voice alone (synthesizer + index); the shared content encoder is not counted."""
        return self.net.memory_bytes + (self.index.memory_bytes if self.index else 0)

    def validate(self, params: ConversionParams) -> ConversionParams:
        params.validate(self.speaker_count)
        if params.formant_shift_semitones != 0:
            # The RVC network has no formant control; silently ignoring the request would mislead the client.
            raise InvalidParameters(
                [("formant_shift_semitones", "RVC models have no formant control; leave it 0 or use a WORLD voice")]
            )
        if params.f0_method == "rmvpe" and self.uses_f0 and not self.f0.has_rmvpe:
            raise MethodUnavailable("rmvpe needs its weight file (rmvpe.pt in the models directory)")
        return params

    # ---------------------------------------------------------------------------------------------- conversion

    def convert(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        *,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> tuple[NDArray[np.float32], int]:
        """Convert a whole utterance. Returns (float32 mono audio, its rate): the model's rate unless out_sr is given.
        The output covers exactly the input's duration. Raises JobCancelled soon after `should_stop()` turns true."""
        check_stop(should_stop)
        self.validate(params)
        if sr <= 0:
            raise InvalidParameters([("sample_rate_hz", "must be positive")])
        x = to_16k(audio, sr)
        peak = float(np.abs(x).max()) / 0.95 if len(x) else 0.0
        if peak > 1:
            x = x / peak
        x = highpass(x)
        tgt = self.sample_rate
        n_out = round(len(x) * tgt / SR)
        if len(x) < HOP:
            return self._finish(np.zeros(n_out, np.float32), x, params, out_sr)
        gen = self._generator(seed)
        t_pad = int(self.pipeline.x_pad * SR)
        t_pad = t_pad // HOP * HOP
        padded = np.pad(x, (t_pad, t_pad), mode="reflect")
        check_stop(should_stop)
        pitch, pitchf = self._pitch(padded, params, should_stop)
        bounds = [0, *[c // HOP * HOP for c in split_points(x, self.pipeline)], len(x)]
        pieces = []
        for s, e in itertools.pairwise(bounds):
            if e <= s:
                continue
            seg = padded[s : e + 2 * t_pad]
            sl = slice(s // HOP, (e + 2 * t_pad) // HOP)
            # The decoder (most of the cost) skips the reflect padding; the prior still reads all of it.
            window = DecodeWindow(t_pad // HOP, (e - s) // HOP + 1)
            y = self._segment(
                seg,
                pitch[sl] if pitch is not None else None,
                pitchf[sl] if pitchf is not None else None,
                params,
                gen,
                should_stop,
                window,
            )
            pieces.append(_fit_len(y, round((e - s) * tgt / SR)))
        y = _fit_len(np.concatenate(pieces), n_out)
        check_stop(should_stop)
        return self._finish(y, x, params, out_sr)

    def convert_block(
        self,
        audio: NDArray[np.floating[Any]],
        sr: int,
        params: ConversionParams,
        *,
        context: int,
        out_sr: int | None = None,
        seed: int | None = None,
        should_stop: ShouldStop | None = None,
    ) -> NDArray[np.float32]:
        """Streaming step: `audio` is left context followed by the new block (`context` samples of it are context, at
        `sr`). Returns only the converted block, exactly len(block) * rate / sr samples at out_sr (default the
        model's rate). The context gives the content encoder and F0 tracker history; pick >= 0.3 s. Pass 16 kHz
        input to avoid per-block resampling edges, and join blocks with a crossfade (SOLA) upstream."""
        check_stop(should_stop)
        self.validate(params)
        if not 0 <= context <= len(audio):
            raise InvalidParameters([("context", f"must be between 0 and {len(audio)}")])
        rate = out_sr or self.sample_rate
        n_block_out = round((len(audio) - context) * rate / sr)
        x = highpass(to_16k(audio, sr))
        ctx16 = round(context * SR / sr)
        # Half a content frame of mirrored look-ahead so the final frames of the block still get features.
        tail = min(480, len(x) - 1) if len(x) > 1 else 0
        xp = np.pad(x, (0, tail), mode="reflect") if tail else x
        if len(xp) < 2 * HOP + 400:
            return np.zeros(n_block_out, np.float32)
        check_stop(should_stop)
        pitch, pitchf = self._pitch(xp, params, should_stop)
        # The decoder runs on the block only (plus its margin): the context serves the content encoder and prior.
        first = ctx16 // HOP
        window = DecodeWindow(first, max(0, len(xp) // HOP - first))
        y = self._segment(xp, pitch, pitchf, params, self._generator(seed), should_stop, window)
        check_stop(should_stop)
        tgt = self.sample_rate
        # The decoded frames start at the first whole frame of the block (context lengths are whole frames in
        # practice); the loudness mix compares the block with its own input.
        skip = round(ctx16 * tgt / SR) - first * self.net.hop
        block = _fit_len(y[skip:], round((len(x) - ctx16) * tgt / SR))
        block = mix_rms(x[ctx16:], SR, block, tgt, params.rms_mix_rate)
        if rate != tgt:
            block = soxr.resample(block, tgt, rate).astype(np.float32)
        return _fit_len(block, n_block_out)

    # -------------------------------------------------------------------------------------------------- steps

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(seed)

    def _pitch(
        self, audio16k: NDArray[np.float32], params: ConversionParams, should_stop: ShouldStop | None = None
    ) -> tuple[NDArray[np.int64] | None, NDArray[np.float32] | None]:
        if not self.uses_f0:
            return None, None
        n = len(audio16k) // HOP
        f0 = self.f0.estimate(audio16k, params.f0_method, n, params.filter_radius, should_stop=should_stop)
        f0 = shift_f0(f0, params.pitch_shift_semitones)
        return coarse_f0(f0.copy()), f0

    def features(
        self, audio16k: NDArray[np.float32], index_rate: float, should_stop: ShouldStop | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content features at 100 frames/s: (after index blend, before blend), each [1, frames, dim]."""
        x = torch.from_numpy(np.ascontiguousarray(audio16k, dtype=np.float32)).to(self.device)[None]
        check_stop(should_stop)
        feats = self.content_encoder.extract(x, self.version, should_stop).float()
        feats0 = feats
        if self.index is not None and index_rate > 0:
            check_stop(should_stop)
            blended = self.index.blend(feats[0].cpu().numpy(), index_rate)
            feats = torch.from_numpy(blended).to(self.device)[None]
        # 50 Hz content frames -> 100 Hz F0 frames.
        return feats.repeat_interleave(2, dim=1), feats0.repeat_interleave(2, dim=1)

    def _segment(
        self,
        audio16k: NDArray[np.float32],
        pitch: NDArray[np.int64] | None,
        pitchf: NDArray[np.float32] | None,
        params: ConversionParams,
        gen: torch.Generator | None,
        should_stop: ShouldStop | None = None,
        window: DecodeWindow | None = None,
    ) -> NDArray[np.float32]:
        """Content features, protection and synthesis of one piece; only `window`'s frames when given (clipped to the
        frames the features cover)."""
        feats, feats0 = self.features(audio16k, params.index_rate, should_stop)
        p_len = min(len(audio16k) // HOP, feats.shape[1])
        feats, feats0 = feats[:, :p_len], feats0[:, :p_len]
        pt = pft = None
        if pitch is not None and pitchf is not None:
            pt = torch.from_numpy(_fit_len(pitch, p_len, fill=1)).to(self.device)[None]
            pft = torch.from_numpy(_fit_len(pitchf, p_len)).to(self.device)[None]
            feats = protect_features(feats, feats0, pft, params.protect)
        lengths = torch.tensor([p_len], device=self.device)
        sid = torch.tensor([params.speaker_id], device=self.device)
        feats = feats.to(self.dtype)  # F0 (pft) stays float32: the excitation's phase needs the precision
        if window is not None:
            start = min(window.start, p_len)
            window = DecodeWindow(start, min(window.frames, p_len - start))
        check_stop(should_stop)
        y = self.net.infer(feats, lengths, pt, pft, sid, generator=gen, window=window, should_stop=should_stop)
        audio: NDArray[np.float32] = y[0, 0].float().cpu().numpy()
        return audio

    def _finish(
        self, y: NDArray[np.float32], x16: NDArray[np.float32], params: ConversionParams, out_sr: int | None
    ) -> tuple[NDArray[np.float32], int]:
        tgt = self.sample_rate
        y = mix_rms(x16, SR, y, tgt, params.rms_mix_rate)
        rate = out_sr or tgt
        if rate != tgt and len(y):
            y = _fit_len(soxr.resample(y, tgt, rate).astype(np.float32), round(len(y) * rate / tgt))
        peak = float(np.abs(y).max()) / 0.99 if len(y) else 0.0
        if peak > 1:  # keep headroom instead of clipping
            y = y / peak
        return y.astype(np.float32), rate


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch.load refused a file, in words for the client (torch's own text advises weights_only=False, which
    would run the file's code, and may quote paths)."""
    text = str(exc)
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
    except OSError:
        return "the file cannot be read"
    if "Unsupported global" in text:
        return "it holds Python objects, not just tensors and plain values"
    if "zip" in text.lower() or "central directory" in text or "PytorchStreamReader" in text:
        return "a damaged or truncated checkpoint archive"
    if isinstance(exc, PermissionError | IsADirectoryError):
        return "the file cannot be read"
    return "not a PyTorch checkpoint"


def _fit_len(x: NDArray[_Scalar], n: int, fill: Any = 0) -> NDArray[_Scalar]:
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.full(n - len(x), fill, dtype=x.dtype)])


__all__ = ["PipelineConfig", "RvcModel", "highpass", "mix_rms", "protect_features", "split_points", "to_16k"]
