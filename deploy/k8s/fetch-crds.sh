#!/usr/bin/env bash
# The Flink Kubernetes Operator's CRDs, for tests/test_deploy_k8s.py to validate the manifests against: the operator
# generates them into its API jar (META-INF/fabric8/), which Maven Central serves; its Helm chart installs the same
# ones on a cluster. Extracted into .local/k8s/ (never committed). Prints the folder; does nothing when it is there.
set -euo pipefail

# Keep in step with the operator version in README.md. 1.10.0 is the newest API jar the registries here serve.
OPERATOR_VERSION=1.10.0
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${JOURNEYS_LOCAL_DIR:-$ROOT/.local}/k8s
CRDS=$OUT/crds-$OPERATOR_VERSION
JAR=flink-kubernetes-operator-api-$OPERATOR_VERSION.jar

if [ ! -s "$CRDS/flinkdeployments.flink.apache.org-v1.yml" ]; then
  mkdir -p "$OUT"
  if [ ! -s "$OUT/$JAR" ]; then
    # A plugin version that copies without a pom (Maven's default 2.x does not).
    mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact=org.apache.flink:flink-kubernetes-operator-api:$OPERATOR_VERSION -DoutputDirectory="$OUT" >&2
  fi
  # Into a temporary folder first, so an interrupted run never leaves a half-extracted one that looks done.
  tmp=$(mktemp -d "$OUT/crds.XXXXXX") && chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  # Only the apiextensions.k8s.io/v1 files (-v1.yml): the -v1beta1.yml twins are for Kubernetes before 1.16.
  unzip -q -j "$OUT/$JAR" 'META-INF/fabric8/*-v1.yml' -d "$tmp"
  rm -rf "$CRDS"
  mv "$tmp" "$CRDS"
fi
echo "$CRDS"
