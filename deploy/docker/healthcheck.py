"""Container health check for images without curl or grpc_health_probe (slim bases carry neither).

    python /usr/local/lib/voice/healthcheck.py grpc PORT_VARIABLE DEFAULT_PORT [SERVICE]
    python /usr/local/lib/voice/healthcheck.py http URL

`grpc` asks the standard gRPC health service on 127.0.0.1 (the port read from the service's own environment
variable, so a changed port needs no second setting) and succeeds only on SERVING; with GATEWAY_TLS_CERT/RVC_TLS_CERT
set it only completes a TLS handshake (the probe holds no client certificate). `http` succeeds on a 200.
Exit status 0 healthy, 1 not: what Docker's HEALTHCHECK and compose's healthcheck read.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import urllib.request


def check_grpc(port_variable: str, default_port: str, service: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = int(os.environ.get(port_variable, default_port))
    prefix = port_variable.rsplit("_", 1)[0]
    if os.environ.get(f"{prefix}_TLS_CERT"):
        return tls_handshake(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def tls_handshake(port: int) -> bool:
    """With TLS on (possibly mutual), a completed handshake is the liveness signal: the probe has no client
    certificate and checks that the listener answers, not who it is."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, context.wrap_socket(raw):
        return True


def check_http(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return bool(response.status == 200)


def main(argv: list[str]) -> int:
    try:
        if len(argv) >= 3 and argv[0] == "grpc":
            healthy = check_grpc(argv[1], argv[2], argv[3] if len(argv) > 3 else "")
        elif len(argv) == 2 and argv[0] == "http":
            healthy = check_http(argv[1])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as exc:  # any failure to get an answer is "unhealthy", with the reason in the health log
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
