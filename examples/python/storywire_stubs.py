"""Python stubs for storywire.v1, generated from proto/ on first use and cached.

The stubs are not committed: they would go stale the day the protos change. Instead `load()` runs
grpcio-tools' protoc over proto/storywire/v1/*.proto into a cache directory named for a hash of the
protos and the grpcio-tools version, so a changed proto or a new grpcio-tools gets fresh stubs and
an unchanged one costs nothing after the first run.

    from storywire_stubs import load
    pb, pb_grpc = load()
    stub = pb_grpc.StoryServiceStub(channel)
    request = pb.SubscribeRequest(from_sequence=1)
"""

import hashlib
import importlib
import importlib.resources
import os
import pathlib
import shutil
import sys
import tempfile

# The repository's proto/ directory, found from this file (examples/python/ -> the root);
# STORYWIRE_PROTO_DIR points elsewhere when the scripts are copied out of the repository.
PROTO_DIR = pathlib.Path(
    os.environ.get("STORYWIRE_PROTO_DIR") or pathlib.Path(__file__).resolve().parents[2] / "proto"
)


def load():
    """Returns (service_pb2, service_pb2_grpc) for storywire.v1, generating them if needed."""
    stubs_dir = _generate()
    if str(stubs_dir) not in sys.path:
        sys.path.insert(0, str(stubs_dir))
    pb = importlib.import_module("storywire.v1.service_pb2")
    pb_grpc = importlib.import_module("storywire.v1.service_pb2_grpc")
    return pb, pb_grpc


def _generate():
    """Generates the stubs into the cache unless they are already there; returns their root."""
    # Imported here so that a missing grpcio-tools fails with the hint below, not at import.
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        sys.exit("grpcio-tools is missing: pip install -r examples/python/requirements.txt")

    protos = sorted((PROTO_DIR / "storywire" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files under {PROTO_DIR}/storywire/v1 (set STORYWIRE_PROTO_DIR)")
    digest = hashlib.sha256(_grpc_tools_version().encode())
    for proto in protos:
        digest.update(proto.name.encode())
        digest.update(proto.read_bytes())
    target = _cache_root() / digest.hexdigest()[:16]
    if (target / "storywire" / "v1" / "service_pb2_grpc.py").exists():
        return target

    # grpcio-tools ships google/protobuf/*.proto (timestamp, duration) beside its own module; the
    # storywire protos import them, so that directory goes on the include path.
    well_known = importlib.resources.files(grpc_tools) / "_proto"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Generated in a private directory and renamed into place, so two scripts starting at once
    # never import a half-written module: the loser of the rename keeps the winner's copy.
    scratch = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_DIR}",
                f"-I{well_known}",
                f"--python_out={scratch}",
                f"--grpc_python_out={scratch}",
                *[str(p.relative_to(PROTO_DIR)) for p in protos],
            ]
        )
        if code != 0:
            sys.exit(f"protoc failed ({code}) on {PROTO_DIR}")
        try:
            scratch.rename(target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _cache_root():
    """Where generated stubs live: $STORYWIRE_STUBS_DIR, else the user's cache directory."""
    explicit = os.environ.get("STORYWIRE_STUBS_DIR")
    if explicit:
        return pathlib.Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "storywire" / "python-stubs"


def _grpc_tools_version():
    """The installed grpcio-tools version: stubs from another version may not import."""
    try:
        from importlib.metadata import version

        return version("grpcio-tools")
    except Exception:  # an unusual install without metadata: key on the protos alone
        return "unknown"
