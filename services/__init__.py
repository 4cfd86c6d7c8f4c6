"""StreamChar's gRPC services: one package per service, each with its server and Dockerfile."""
