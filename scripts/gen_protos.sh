#!/usr/bin/env bash
# Regenerates the Python stubs (and their mypy .pyi) from protos/kagi/**.proto; the output is committed.
# CI runs this and fails when `git status --porcelain protos` shows a difference.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
bindir=$(dirname "$(command -v "$python")")
export PATH="$bindir:$PATH"   # protoc-gen-mypy and protoc-gen-mypy_grpc live beside the interpreter

find protos/kagi -name '*_pb2*.py' -delete -o -name '*_pb2*.pyi' -delete
mapfile -t files < <(cd protos && find kagi -name '*.proto' | LC_ALL=C sort)
"$python" -m grpc_tools.protoc \
  --proto_path=protos \
  --python_out=protos \
  --grpc_python_out=protos \
  --mypy_out=protos \
  --mypy_grpc_out=protos \
  "${files[@]}"
echo "generated stubs for ${#files[@]} proto files"
