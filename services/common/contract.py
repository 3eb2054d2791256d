"""Facts that several services, the HTTP edge and the deployment must agree on, each written once here.

Everything in this module is plain data or a pure check: no gRPC, no numpy, no I/O, so any layer can import it.
`tests/architecture/test_shared_facts.py` fails when one of these values is written out again as a literal where it
matters (ports, message caps, limits). The Python client cannot import the services; its own copies of the default
targets are compared with these by the same test.
"""

from __future__ import annotations

import re

MiB = 1024 * 1024

# Well-known ports and the loopback targets of `make run`.
GATEWAY_PORT = 50051
RVC_PORT = 50052
GATEWAY_METRICS_PORT = 9101
RVC_METRICS_PORT = 9102
GATEWAY_TARGET = f"127.0.0.1:{GATEWAY_PORT}"
RVC_TARGET = f"127.0.0.1:{RVC_PORT}"
TRITON_TARGET = "127.0.0.1:8001"

# The largest gRPC message a service or an upstream channel accepts unless configured otherwise.
MAX_MESSAGE_MB = 64

# The conversion service refuses a Convert audio message above this; the gateway splits its audio to fit.
MAX_CONVERSION_MESSAGE_BYTES = 1 * MiB

# Reference audio for cloning, in a request or in a saved voice.
MAX_REFERENCE_BYTES = 8 * MiB
MIN_REFERENCE_S = 1.0
MAX_REFERENCE_S = 30.0
MAX_REFERENCE_TEXT_CHARS = 1000

# Speaking rate: 1.0 is the voice's normal pace, 0 means "not set" (normal). OpenAI's `speed` has the same range.
MIN_SPEAKING_RATE = 0.25
MAX_SPEAKING_RATE = 4.0


def speaking_rate_problem(rate: float) -> str | None:
    """What is wrong with `rate` as a speaking rate (phrased as what to fix), or None when it is valid."""
    if rate == 0 or (rate == rate and MIN_SPEAKING_RATE <= rate <= MAX_SPEAKING_RATE):  # rate == rate: not NaN
        return None
    return f"must be 0 (normal) or {MIN_SPEAKING_RATE:g}..{MAX_SPEAKING_RATE:g}, got {rate}"


# The synthesis modes that take reference audio, as the models' `supported_modes` parameter and the proto's
# SynthesisMode enum (upper-cased, prefixed SYNTHESIS_MODE_) name them.
CLONING_MODE_NAMES: tuple[str, ...] = ("zero_shot", "cross_lingual")

# Names a client chooses and later types into requests: saved voices and conversion models. A name becomes a file or
# directory name, so no path separators and no "..". Conversion models may hold spaces (RVC WebUI's exported file
# names often do); saved voices may not, because trailing or doubled spaces make names that look alike but differ.
MAX_NAME_CHARS = 128
_NAME_CHARS = r"A-Za-z0-9._-"
_NAME_CHARS_WITH_SPACE = r"A-Za-z0-9._ -"


def _name_rule(allow_spaces: bool) -> str:
    spaces = ", ' '" if allow_spaces else ""
    return f"1-{MAX_NAME_CHARS} characters: letters, digits, '.', '_', '-'{spaces}, starting with a letter or digit"


def name_problem(name: object, *, allow_spaces: bool = False) -> str | None:
    """What is wrong with `name` as a saved-voice or model name (phrased as what to fix), or None when it is valid."""
    rule = _name_rule(allow_spaces)
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return f"must not be empty; use {rule}"
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters (got {len(name)})"
    if not name[0].isascii() or not name[0].isalnum():
        return f"must start with a letter or digit; use {rule}"
    bad = re.search(f"[^{_NAME_CHARS_WITH_SPACE if allow_spaces else _NAME_CHARS}]", name)
    if bad is not None:
        return f"contains {bad.group()!r} at offset {bad.start()}; use {rule}"
    if ".." in name:
        return "must not contain '..'"
    return None


__all__ = [
    "CLONING_MODE_NAMES",
    "GATEWAY_METRICS_PORT",
    "GATEWAY_PORT",
    "GATEWAY_TARGET",
    "MAX_CONVERSION_MESSAGE_BYTES",
    "MAX_MESSAGE_MB",
    "MAX_NAME_CHARS",
    "MAX_REFERENCE_BYTES",
    "MAX_REFERENCE_S",
    "MAX_REFERENCE_TEXT_CHARS",
    "MAX_SPEAKING_RATE",
    "MIN_REFERENCE_S",
    "MIN_SPEAKING_RATE",
    "RVC_METRICS_PORT",
    "RVC_PORT",
    "RVC_TARGET",
    "TRITON_TARGET",
    "MiB",
    "name_problem",
    "speaking_rate_problem",
]
