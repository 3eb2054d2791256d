"""gRPC server reflection, both protocol versions: grpc.reflection.v1 and grpc.reflection.v1alpha.

grpcio-reflection only ships v1alpha, while newer tools (buf curl's default, grpcurl >= 1.9, Postman) ask for v1
first. The v1 protocol is the v1alpha one promoted unchanged: same messages and field numbers under another package.
So one servicer answers both, and a copy of the v1alpha file descriptor renamed to the v1 package is registered in
the descriptor pool so that clients can also describe the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc/reflection/v1/reflection.proto to `pool`, derived from the v1alpha file (once)."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file_proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file_proto)
    old_prefix, new_prefix = f".{file_proto.package}.", f".{V1_PACKAGE}."
    file_proto.name = _V1_FILE
    file_proto.package = V1_PACKAGE
    for message in file_proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name[len(old_prefix) :]
    for service in file_proto.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type[len(old_prefix) :]
            method.output_type = new_prefix + method.output_type[len(old_prefix) :]
    file_proto.options.Clear()  # the Java/C# package options name v1alpha
    pool.Add(file_proto)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` plus both reflection services."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    # The v1alpha handler is the library's; the v1 one reuses the same servicer and (wire-identical) messages.
    reflection.enable_server_reflection(names, server, pool=pool)
    v1_handler = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1_handler,))
