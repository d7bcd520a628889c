"""Generated gRPC code (scripts/gen_proto.sh) for the .proto files in proto/minegan_grpc/: do not edit."""
