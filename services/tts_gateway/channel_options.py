"""gRPC channel options of the gateway's Triton channel (other upstreams use the shared UPSTREAM_CHANNEL_OPTIONS)."""

from __future__ import annotations

from services.common.channels import UPSTREAM_CHANNEL_OPTIONS

# Triton by default answers pings more often than every 5 min without data with GOAWAY "too_many_pings", so its
# channel pings only at that pace and only during calls; the 0.5 s probe loop is what detects a dead Triton.
TRITON_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *(o for o in UPSTREAM_CHANNEL_OPTIONS if not o[0].startswith(("grpc.keepalive", "grpc.http2"))),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
]
