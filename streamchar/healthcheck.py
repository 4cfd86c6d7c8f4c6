"""`python -m streamchar.healthcheck ADDRESS`: exit 0 when the gRPC server at ADDRESS reports SERVING.

The containers' HEALTHCHECK (Dockerfiles, Docker Compose): one `Check` call of the standard
grpc.health.v1 service that every StreamChar service registers, for the server as a whole ("", what
the services set NOT_SERVING on shutdown or, for the orchestrator, while its vLLM server is away) or
for one named service. Kubernetes asks the same health service through its own gRPC probes.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The health status name ADDRESS reports for `service` ("SERVING", "NOT_SERVING", ...).

    Raises grpc.RpcError when the server cannot be reached in `timeout` seconds or does not know `service`.
    """
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamchar.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server, e.g. 127.0.0.1:50051")
    parser.add_argument("--service", default="", help="service name to check (default: the server as a whole)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as e:
        print(f"{args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
