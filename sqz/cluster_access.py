"""Whether a Ray cluster lets this client in, asked before any work: one gRPC call to its
entry point with the token Ray would send. Core (no ray import), so the CLI answers a
missing or wrong token in one line before Prefect or Ray start; sqz.distributed.cluster
asks again before ``ray.init`` (a deployment run never passes through the CLI)."""

from __future__ import annotations

import os

import grpc

__all__ = ["RayAccessError", "check_ray_access"]

_PROBE_TIMEOUT_S = 5.0
# (method, serialized request): GetClusterIdRequest is empty; ClusterInfoRequest is
# field 1 (type) = PING (6), i.e. bytes 08 06 (ray.core.generated.ray_client_pb2).
_PROBES = {
    "gcs": ("/ray.rpc.NodeInfoGcsService/GetClusterId", b""),
    "client": ("/ray.rpc.RayletDriver/ClusterInfo", b"\x08\x06"),
}


class RayAccessError(ValueError):
    """The Ray cluster could not be reached, or refused this client (bad input: a wrong
    address or credential; the CLI prints it as one line)."""


def _auth_token() -> tuple[str | None, str]:
    """The token this process would send, and where it came from (never the token itself
    in any message). Ray's own order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path_setting = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = os.path.expanduser(path_setting or "~/.ray/auth_token")
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError:
        if path_setting:
            raise RayAccessError(f"RAY_AUTH_TOKEN_PATH: cannot read the token file {path}") from None
        token = ""
    if not token:
        return None, "RAY_AUTH_TOKEN"
    return token, "RAY_AUTH_TOKEN_PATH" if path_setting else "~/.ray/auth_token"


def _probe(address: str, token: str | None) -> grpc.StatusCode | None:
    """One cheap RPC to the cluster's entry point with or without the token; None when it
    was accepted. The calls Ray's own clients make first: the GCS's GetClusterId (for
    host:port) and the Ray Client server's ClusterInfo PING (for ray://), sent as raw
    protobuf bytes so that this needs grpc only, not ray."""
    method, request = _PROBES["client" if address.startswith("ray://") else "gcs"]
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address.removeprefix("ray://")) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(request, metadata=metadata, timeout=_PROBE_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code()
    return None


def check_ray_access(address: str) -> None:
    """Refuse, in one line, a cluster that does not answer or does not accept this
    client's token; ``auto`` (a driver on a cluster node) is left to ``ray.init``."""
    if address == "auto":
        return
    token, source = _auth_token()
    refused = _probe(address, token)
    if refused == grpc.StatusCode.UNAUTHENTICATED:
        if token is None:
            raise RayAccessError(f"--ray-address {address}: the Ray cluster requires token authentication and no token "
                                 "was given: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, with "
                                 "RAY_AUTH_MODE=token")  # fmt: skip
        raise RayAccessError(f"--ray-address {address}: the Ray cluster refused the token from {source}: set "
                             "RAY_AUTH_TOKEN to this cluster's token")  # fmt: skip
    if refused is not None:
        raise RayAccessError(f"--ray-address {address}: no Ray cluster answered there ({refused.name.lower()} within "
                             f"{_PROBE_TIMEOUT_S:.0f} s)")  # fmt: skip
    if token is not None and os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and _probe(address, None) is not None:
        # The probe sent the token, but Ray itself only sends it in token mode.
        raise RayAccessError(f"--ray-address {address}: the Ray cluster requires token authentication: set "
                             f"RAY_AUTH_MODE=token (now {os.environ.get('RAY_AUTH_MODE', 'unset')!r}) so that Ray sends "
                             "the token from RAY_AUTH_TOKEN")  # fmt: skip
