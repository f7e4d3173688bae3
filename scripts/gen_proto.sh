#!/usr/bin/env bash
# Regenerate hovcaffe/caffe/caffe_pb2.py from hovcaffe/caffe/caffe.proto.
#
#   scripts/gen_proto.sh            # uses/creates the venv in $PROTOGEN_VENV (/tmp/protogen)
#
# The generated module is committed; rerun this after editing caffe.proto.
# protoc comes from grpcio-tools, pinned so that the gencode version (the
# protobuf version grpcio-tools bundles) is not newer than the protobuf runtime
# hovcaffe runs with (6.x): generated code refuses older runtimes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PROTOGEN_VENV:-/tmp/protogen}"
GRPCIO_TOOLS_SPEC="${GRPCIO_TOOLS_SPEC:-grpcio-tools>=1.74,<1.76}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import grpc_tools" 2>/dev/null; then
  "$VENV/bin/pip" install -q "$GRPCIO_TOOLS_SPEC" "protobuf>=6.31,<6.34"
fi

cd "$ROOT/hovcaffe/caffe"
"$VENV/bin/python" -m grpc_tools.protoc -I. --python_out=. caffe.proto
echo "wrote $ROOT/hovcaffe/caffe/caffe_pb2.py (protoc from $("$VENV/bin/pip" show grpcio-tools 2>/dev/null | grep ^Version))"
