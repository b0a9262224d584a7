"""Ray Serve's gRPC proxy for the Open Inference Protocol v2, on the host the HTTP proxy uses.

    raylane serve --model digits@production --grpc-port 9000   # gRPC on 127.0.0.1:9000
    ray_serve.start(**serve_start_options(host="127.0.0.1", port=8000, grpc_port=9000))

Off unless a gRPC port is given: each listening port is one more thing to secure and Ray's
gRPC proxy costs a server in the proxy process; HTTP (v1 and v2) is on by default.

Ray Serve 2.60 binds its gRPC proxy to every interface, "[::]:port", whatever the HTTP host
(`start_grpc_server` in ray/serve/_private/grpc_util.py, through `default_impl.
add_grpc_address`). raylane binds it to the same host as HTTP: the Serve controller is started
with a worker_process_setup_hook (`bind_grpc_to_host`) in its runtime_env's env_vars, the one
runtime_env field `serve.start(controller_options=...)` accepts; the proxies, started by the
controller, inherit it and run the hook before their gRPC server starts. Like every Serve
start option it applies when this call starts Serve, not to a Serve already running.
"""

from __future__ import annotations

import os

SERVICER = "serve.proto.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
HOST_ENV = "RAYLANE_GRPC_HOST"


def serve_start_options(*, host: str, port: int, grpc_port: int | None = None) -> dict:
    """Keyword arguments of `ray.serve.start`: HTTP on host:port, and gRPC on host:grpc_port."""
    options: dict = {"http_options": {"host": host, "port": port}}
    if grpc_port:
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

        options["grpc_options"] = {"port": grpc_port, "grpc_servicer_functions": [SERVICER]}
        hook = f"{__name__}.{bind_grpc_to_host.__name__}"
        env_vars = {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: hook, HOST_ENV: host}
        options["controller_options"] = {"runtime_env": {"env_vars": env_vars}}
    return options


def grpc_address(host: str, port: int) -> str:
    """host:port as gRPC writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_grpc_to_host() -> None:
    """The setup hook: Serve's gRPC server in this process listens on $RAYLANE_GRPC_HOST."""
    host = os.environ.get(HOST_ENV)
    if not host:
        return
    from ray.serve._private import default_impl

    # Ray's own function, also when the hook runs twice in one process
    original = getattr(default_impl.add_grpc_address, "raylane_original", None)
    original = original or default_impl.add_grpc_address

    def add_grpc_address(server, address: str):
        return original(server, grpc_address(host, int(address.rsplit(":", 1)[1])))

    add_grpc_address.raylane_original = original
    default_impl.add_grpc_address = add_grpc_address
