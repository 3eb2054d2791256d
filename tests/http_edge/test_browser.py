"""The edge's web page in a real headless Chromium (Debian's `chromium` package) driven by Playwright.

The page talks to the real edge, which talks to the real gateway; the audio lengths and error messages it shows are
checked against direct gRPC calls to that same gateway. A screenshot of a finished synthesis is kept as a test
artifact under $VOICE_TEST_ARTIFACTS (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from voice.v1 import audio_pb2, tts_gateway_pb2, tts_gateway_pb2_grpc, voice_conversion_pb2, voice_conversion_pb2_grpc

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = Path(os.environ.get("VOICE_TEST_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VOICE_TEST_CHROMIUM)"
)

# The machine's network is closed: background networking only fills the log with refused connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A synthetic microphone (a beep) that needs no permission prompt, for the recording test.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
# Three sentences: the first is heard while the others are still being synthesized.
TEXT = "The page streams this sentence first. The second one follows it. And a third one ends the test."
PCM16 = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)
FINISHED = "['done', 'error', 'stopped'].includes(document.body.dataset.state)"
# What Chromium itself logs for any 4xx/5xx response; an error case expects it, and it is not the page's own.
NETWORK_ERROR_PREFIX = "Failed to load resource"


@dataclass
class Console:
    """Console messages and uncaught page errors of one page."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def problems(self, *, allow_network_errors: bool = False) -> list[str]:
        found = [f"{kind}: {text}" for kind, text in self.messages if kind in ("error", "warning")]
        if allow_network_errors:
            found = [text for text in found if NETWORK_ERROR_PREFIX not in text]
        return found + [f"uncaught: {error}" for error in self.page_errors]


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page_console(browser_context: Any, http_edge: Any) -> Iterator[tuple[Any, Console]]:
    """A fresh tab on the edge's page, idle with its voice list loaded; its console is recorded."""
    page = browser_context.new_page()
    console = Console()
    page.on("console", lambda message: console.messages.append((message.type, message.text)))
    page.on("pageerror", lambda error: console.page_errors.append(str(error)))
    page.goto(http_edge.url)
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=30_000)
    assert page.evaluate("document.body.dataset.state") == "idle", page.inner_text("#error")
    try:
        yield page, console
    finally:
        page.close()


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("VOICE_TEST_ARTIFACTS")
    directory = Path(configured) if configured else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def gateway_stub(gateway: Any) -> tts_gateway_pb2_grpc.TtsGatewayServiceStub:
    return tts_gateway_pb2_grpc.TtsGatewayServiceStub(grpc.insecure_channel(gateway.address))


def grpc_audio_seconds(gateway: Any, text: str, voice: str) -> float:
    """Seconds of PCM16 audio a direct Synthesize of `text` gives (the independent measure of the page's audio)."""
    seconds = 0.0
    request = tts_gateway_pb2.SynthesizeRequest(text=text, voice=voice, output_format=PCM16)
    for chunk in gateway_stub(gateway).Synthesize(request, timeout=60):
        seconds += len(chunk.audio) / 2 / chunk.format.sample_rate_hz
    return seconds


def grpc_error(gateway: Any, text: str, voice: str) -> grpc.RpcError:
    request = tts_gateway_pb2.SynthesizeRequest(text=text, voice=voice, output_format=PCM16)
    with pytest.raises(grpc.RpcError) as raised:
        for _ in gateway_stub(gateway).Synthesize(request, timeout=60):
            pass
    return raised.value


def dataset(page: Any) -> dict[str, str]:
    return dict(page.evaluate("({...document.body.dataset})"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_page_lists_voices_and_conversion_models(
    page_console: tuple[Any, Console], gateway: Any, rvc_service: Any
) -> None:
    page, console = page_console
    listed = gateway_stub(gateway).ListVoices(tts_gateway_pb2.ListVoicesRequest(), timeout=10).voices
    options = page.eval_on_selector_all(
        "#voice option", "options => options.map(o => ({value: o.value, available: o.dataset.available}))"
    )
    assert [o["value"] for o in options] == [v.name for v in listed]
    assert [o["available"] for o in options] == [str(v.available).lower() for v in listed]
    assert page.input_value("#voice") in {v.name for v in listed if v.available}
    conversion = voice_conversion_pb2_grpc.VoiceConversionServiceStub(grpc.insecure_channel(rvc_service.address))
    models = conversion.ListModels(voice_conversion_pb2.ListModelsRequest(), timeout=10).models
    offered = page.eval_on_selector_all("#conversion option", "options => options.map(o => o.value)")
    assert offered == ["", *sorted(m.name for m in models)]  # "" is "voice default"
    assert console.problems() == []


def test_synthesis_streams_and_plays_to_the_end(
    page_console: tuple[Any, Console], gateway: Any, artifacts_dir: Path
) -> None:
    page, console = page_console
    # Every state the page passes through, recorded in the page so no transition is missed between polls.
    page.evaluate(
        """() => {
            window.seenStates = [];
            new MutationObserver(() => window.seenStates.push(document.body.dataset.state))
                .observe(document.body, {attributes: true, attributeFilter: ['data-state']});
        }"""
    )
    page.fill("#text", TEXT)
    page.select_option("#voice", "joe")
    page.click("#speak")
    page.wait_for_function(FINISHED, timeout=120_000)
    state = dataset(page)
    assert state["state"] == "done", page.inner_text("#error")
    seen = page.evaluate("window.seenStates")
    assert seen[0] == "streaming" and "playing" in seen and seen[-1] == "done", seen

    ttfa_ms = float(page.inner_text("#ttfa"))
    rtf = float(page.inner_text("#rtf"))
    shown_seconds = float(page.inner_text("#audio-seconds"))
    scheduled = float(state["scheduledSeconds"])
    stream_s = float(state["streamSeconds"])
    assert ttfa_ms > 0
    # The first audio was scheduled before the stream ended: playback started while the rest was still coming.
    assert ttfa_ms / 1000 < stream_s
    assert rtf == pytest.approx(stream_s / scheduled, rel=0.01, abs=0.001)
    assert shown_seconds == pytest.approx(scheduled, abs=0.006)
    # Piper's durations vary a little from run to run (stochastic duration predictor); 10% is far below any
    # lost or doubled sentence (about a third of the total each).
    assert scheduled == pytest.approx(grpc_audio_seconds(gateway, TEXT, "joe"), rel=0.10)
    assert console.problems() == []

    screenshot = artifacts_dir / "web_page_done.png"
    page.screenshot(path=str(screenshot), full_page=True)
    width, height = png_size(screenshot)
    assert width >= 1000 and height >= 600
    print(f"screenshot: {screenshot}")


@pytest.mark.parametrize(
    ("text", "voice"),
    [("Hello there.", "no-such-voice"), ("   ", "joe")],
    ids=["unknown-voice", "blank-text"],
)
def test_error_body_is_shown(page_console: tuple[Any, Console], gateway: Any, text: str, voice: str) -> None:
    page, console = page_console
    expected = grpc_error(gateway, text, voice)
    # The select only offers real voices; a crafted option sends a name the gateway does not know.
    page.evaluate(
        """voice => {
            const select = document.getElementById('voice');
            if (![...select.options].some(o => o.value === voice)) select.add(new Option(voice, voice));
            select.value = voice;
        }""",
        voice,
    )
    page.fill("#text", text)
    page.click("#speak")
    page.wait_for_function(FINISHED, timeout=60_000)
    assert dataset(page)["state"] == "error"
    assert page.is_visible("#error")
    assert (expected.details() or "") in page.inner_text("#error")
    assert page.inner_text("#ttfa") == "–"  # no audio, no time to first audio
    assert console.problems(allow_network_errors=True) == []


def test_stop_cancels_the_stream(page_console: tuple[Any, Console]) -> None:
    page, console = page_console
    page.fill("#text", " ".join([TEXT] * 6))
    page.select_option("#voice", "joe")
    page.click("#speak")
    page.wait_for_function("document.body.dataset.state === 'playing'", timeout=60_000)
    page.click("#stop")
    assert dataset(page)["state"] == "stopped"
    assert page.is_enabled("#speak") and page.is_disabled("#stop")
    assert "streamSeconds" not in dataset(page)  # the stream never reached its end
    assert console.problems() == []


# Bytes split at odd offsets: the player must carry the half sample across reads, and every buffer must start where
# the previous one ended. Rendered offline, the output is the input delayed by the player's start lead.
PLAYER_CHECK = """async ({pieces, rate}) => {
    const total = pieces.reduce((n, p) => n + p, 0);
    const samples = new Int16Array(total / 2);
    for (let i = 0; i < samples.length; i++) samples[i] = Math.round(Math.sin(i / 7) * 20000) + (i % 13);
    const bytes = new Uint8Array(samples.buffer);
    const context = new OfflineAudioContext(1, samples.length + rate, rate);
    const received = [];
    const player = new window.voicePage.StreamPlayer(context, rate, s => received.push(...s));
    let offset = 0;
    for (const size of pieces) {
        player.push(bytes.slice(offset, offset + size));
        offset += size;
    }
    const placed = player.placed;
    let contiguous = true;
    for (let i = 1; i < placed.length; i++) {
        if (Math.abs(placed[i][0] - (placed[i - 1][0] + placed[i - 1][1])) > 1e-9) contiguous = false;
    }
    const rendered = (await context.startRendering()).getChannelData(0);
    const start = Math.round(placed[0][0] * rate);
    let worst = 0;
    for (let i = 0; i < samples.length; i++) {
        worst = Math.max(worst, Math.abs(rendered[start + i] - samples[i] / 32768));
    }
    const decodedExact = received.length === samples.length && received.every((v, i) => v === samples[i] / 32768);
    return {decodedExact, contiguous, buffers: placed.length, worst, underruns: player.underruns,
            scheduled: player.scheduledSeconds, expected: samples.length / rate};
}"""


def expected_buffers(pieces: list[int]) -> int:
    """Reads that complete at least one sample, counting the byte a previous odd read left over."""
    carried, buffers = 0, 0
    for size in pieces:
        available = carried + size
        buffers += available >= 2
        carried = available % 2
    return buffers


def test_player_joins_odd_sized_reads_without_gaps(page_console: tuple[Any, Console]) -> None:
    page, console = page_console
    pieces = [1, 3, 2, 5, 7, 1, 1, 999, 2, 1, 4001, 3]  # sums to an even 5026 bytes
    result = page.evaluate(PLAYER_CHECK, {"pieces": pieces, "rate": 16000})
    assert result["decodedExact"], result
    assert result["contiguous"], result
    assert result["buffers"] == expected_buffers(pieces)
    assert result["underruns"] == 0
    assert result["scheduled"] == pytest.approx(result["expected"], abs=1e-9)
    assert result["worst"] < 1e-4, result
    assert console.problems() == []


RECORDING_CHECK = """async () => {
    const bytes = new Uint8Array(await (await fetch(document.getElementById('reference-preview').src)).arrayBuffer());
    const view = new DataView(bytes.buffer);
    const tag = offset => String.fromCharCode(...bytes.slice(offset, offset + 4));
    return {riff: tag(0), wave: tag(8), format: view.getUint16(20, true), channels: view.getUint16(22, true),
            rate: view.getUint32(24, true), bits: view.getUint16(34, true), dataBytes: view.getUint32(40, true),
            size: bytes.length};
}"""


def test_recorded_reference_becomes_a_mono_wav(page_console: tuple[Any, Console]) -> None:
    page, console = page_console
    # Only cloning voices show the reference controls; none of the shipped voices clones, so show them directly.
    page.evaluate("document.getElementById('reference-section').hidden = false")
    page.click("#record")
    page.wait_for_function("document.getElementById('reference-status').textContent.startsWith('Recording')")
    recording_s = 1.5  # the clip's length: what is being recorded, not a wait for something to happen
    page.evaluate("s => new Promise(resolve => setTimeout(resolve, s * 1000))", recording_s)
    page.click("#record-stop")
    page.wait_for_function("/ s\\.$/.test(document.getElementById('reference-status').textContent)", timeout=10_000)
    wav = page.evaluate(RECORDING_CHECK)
    assert (wav["riff"], wav["wave"], wav["format"], wav["channels"], wav["bits"]) == ("RIFF", "WAVE", 1, 1, 16)
    assert wav["size"] == 44 + wav["dataBytes"]
    seconds = wav["dataBytes"] / 2 / wav["rate"]
    assert 0.5 * recording_s < seconds < recording_s + 1.0, wav
    shown = float(page.inner_text("#reference-status").split(",")[1].strip().removesuffix(" s."))
    assert shown == pytest.approx(seconds, abs=0.06)
    assert console.problems() == []


# --------------------------------------------------------------------------------------------------------------------
# Speak as I type
# --------------------------------------------------------------------------------------------------------------------


def test_typed_text_becomes_word_deltas(page_console: tuple[Any, Console]) -> None:
    page, console = page_console
    cases = {
        "Hel": ["", "Hel"],
        "Hello ": ["Hello ", ""],
        "Hello there fr": ["Hello there ", "fr"],
        "friend.": ["friend.", ""],
        "Wait, what": ["Wait, ", "what"],
        "   ": ["", "   "],  # spaces alone wait for the next word
        " How": ["", " How"],
    }
    for pending, expected in cases.items():
        assert page.evaluate("p => window.voicePage.splitTyped(p)", pending) == expected, pending
    assert console.problems() == []


def test_speak_as_i_type(page_console: tuple[Any, Console], gateway: Any) -> None:
    page, console = page_console
    listed = gateway_stub(gateway).ListVoices(tts_gateway_pb2.ListVoicesRequest(), timeout=10).voices
    flags = page.eval_on_selector_all("#voice option", "options => options.map(o => o.dataset.streamsTextInput)")
    assert flags == [str(v.streams_text_input).lower() for v in listed]
    text = "Hello there friend. How are you"
    page.fill("#text", "")
    page.select_option("#voice", "joe")
    page.check("#type-mode")
    page.type("#text", text, delay=15)
    # Completed words went out while typing: "Hello ", "there ", "friend.", " How ", "are ".
    assert dataset(page)["typedDeltas"] == "5"
    page.press("#text", "Enter")  # the rest ("you") and the end of the turn
    page.wait_for_function(FINISHED, timeout=120_000)
    state = dataset(page)
    assert state["state"] == "done", page.inner_text("#error")
    assert state["typedDeltas"] == "6"
    assert page.input_value("#text") == text  # Enter ended the turn instead of adding a line
    assert float(state["scheduledSeconds"]) == pytest.approx(grpc_audio_seconds(gateway, text, "joe"), rel=0.15)
    assert float(state["ttfaMs"]) > 0
    assert console.problems() == []
