#!/usr/bin/env bash
# Builds the Dataflow Flex Template of `journeys stream`: its image in Artifact Registry (Cloud Build, or the local
# Docker with BUILDER=docker) and its spec file in Cloud Storage. Prints the IMAGE and TEMPLATE that launch.sh takes.
#
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-bucket deploy/dataflow/build.sh
#
# Optional: REPOSITORY (an Artifact Registry Docker repository in REGION; default journeys), TAG (default: the time).
set -euo pipefail

: "${PROJECT:?the Google Cloud project}"
: "${REGION:?the region of the Artifact Registry repository, e.g. europe-west1}"
: "${BUCKET:?a Cloud Storage bucket for the template spec, without gs://}"
REPOSITORY=${REPOSITORY:-journeys}
TAG=${TAG:-$(date -u +%Y%m%d-%H%M%S)}
BUILDER=${BUILDER:-cloudbuild}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
image=$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/journeys-stream:$TAG
template=gs://$BUCKET/templates/journeys-stream-$TAG.json

case $BUILDER in
  cloudbuild)
    # `gcloud builds submit --tag` wants the Dockerfile at the root of the upload; the upload leaves out what
    # .gitignore lists (.venv, .local).
    config=$(mktemp)
    trap 'rm -f "$config"' EXIT
    cat >"$config" <<EOF
steps:
  - name: gcr.io/cloud-builders/docker
    args: [build, --file=deploy/dataflow/Dockerfile, --tag=$image, .]
images: [$image]
EOF
    gcloud builds submit "$root" --project="$PROJECT" --config="$config"
    ;;
  docker)
    docker build --file="$root/deploy/dataflow/Dockerfile" --tag="$image" "$root"
    docker push "$image"
    ;;
  *)
    echo "BUILDER is cloudbuild or docker, not $BUILDER" >&2
    exit 2
    ;;
esac

gcloud dataflow flex-template build "$template" --project="$PROJECT" --image="$image" --sdk-language=PYTHON \
  --metadata-file="$root/deploy/dataflow/metadata.json"

echo "IMAGE=$image"
echo "TEMPLATE=$template"
