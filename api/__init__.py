"""The HTTP API (FastAPI), ``/v2`` and gRPC over the service layer in ``api/services/``."""

VERSION = "0.1.0"
