#!/usr/bin/env bash
# Prism, Beam's local portable runner, built from the Go module proxy at the Beam version the venv has.
#   deploy/local/prism.sh          build it once (idempotent) and print its path
# Pipelines get it as --prism_location=<path>; without it Beam 2.77 would try to download a release binary.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin_dir=${JOURNEYS_LOCAL_DIR:-$root/.local}/bin
python=${PYTHON:-$root/.venv/bin/python}
version=$("$python" -c 'import importlib.metadata as m; print(m.version("apache-beam"))')
target=$bin_dir/prism-$version
if [ ! -x "$target" ]; then
  echo "prism: building github.com/apache/beam/sdks/v2/go/cmd/prism@v$version (a few minutes, once)" >&2
  mkdir -p "$bin_dir"
  GOBIN=$bin_dir GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$version"
  mv "$bin_dir/prism" "$target"
fi
ln -sf "$(basename "$target")" "$bin_dir/prism"
echo "$bin_dir/prism"
