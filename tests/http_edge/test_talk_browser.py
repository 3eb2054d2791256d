"""The talk page in a real headless Chromium whose microphone is a WAV file: Piper joe saying a known sentence
(Chromium's --use-file-for-fake-audio-capture, which loops the file). The page captures it with an AudioWorklet,
downsamples to 16 kHz PCM16 and streams it to /v1/talk on the real edge; the transcript must show up on the page
and a reply must be received and played. Runs where Chromium and Playwright are installed (skipped elsewhere, as
test_browser.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_edge.talk_session import silence, speak_pcm16
from tests.recognition.wer import wer

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = Path(os.environ.get("VOICE_TEST_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VOICE_TEST_CHROMIUM)"
)

SENTENCE = "Please call me back when you get home tonight."
RATE = 16_000
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def microphone_wav(gateway: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("talk-mic") / "sentence.wav"
    pcm = silence(0.5, RATE) + speak_pcm16(gateway.address, SENTENCE, rate=RATE) + silence(2.0, RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
def talk_browser(microphone_wav: Path) -> Iterator[Any]:
    profile = Path(tempfile.mkdtemp(prefix="chromium-talk-"))
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*BASE_ARGS, f"--use-file-for-fake-audio-capture={microphone_wav}"],
            viewport={"width": 1100, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_the_talk_page_transcribes_the_microphone_and_plays_a_reply(talk_browser: Any, http_edge: Any) -> None:
    page = talk_browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    try:
        page.goto(http_edge.url)
        page.click("#talk-link")
        page.wait_for_function("document.body.dataset.state === 'idle'", timeout=30_000)
        assert page.input_value("#voice") == "joe"
        page.select_option("#reply", "echo")
        page.click("#start")
        page.wait_for_function("document.body.dataset.state === 'listening'", timeout=30_000)
        page.wait_for_function("Number(document.body.dataset.replies) >= 1", timeout=120_000)
        page.click("#stop")
        data = dict(page.evaluate("({...document.body.dataset})"))
        assert int(data["finalTranscripts"]) >= 1 and data["state"] == "stopped", data
        first = page.inner_text("#turns li.you")
        assert wer(SENTENCE, first) < 0.4, first
        assert float(data["replySeconds"]) > 1.0, data
        reply = page.inner_text("#turns li.reply")
        assert first in reply and "ms" in reply  # the echoed text and its timings
        assert problems == [], problems
    finally:
        page.close()
