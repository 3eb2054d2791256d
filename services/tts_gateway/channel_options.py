"""gRPC channel options of the gateway's two upstream channels (Triton, the voice-conversion service)."""

from __future__ import annotations

# Keepalive so a dead peer is noticed on quiet connections; short reconnect backoff so service resumes quickly after
# an upstream restart. Our own services accept a ping every 5 s (services/common/server.py).
UPSTREAM_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Triton by default answers pings more often than every 5 min without data with GOAWAY "too_many_pings", so its
# channel pings only at that pace and only during calls; the 0.5 s probe loop is what detects a dead Triton.
TRITON_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    *(o for o in UPSTREAM_CHANNEL_OPTIONS if not o[0].startswith(("grpc.keepalive", "grpc.http2"))),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
]
