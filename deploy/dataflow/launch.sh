#!/usr/bin/env bash
# Starts `journeys stream` on Dataflow from the Flex Template that build.sh built. Further template parameters
# (deploy/dataflow/metadata.json) or gcloud flags go after the script's name.
#
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-bucket IMAGE=... TEMPLATE=gs://... \
#   KAFKA_SECRET=projects/my-project/secrets/journeys-kafka/versions/latest \
#   PSEUDONYM_KEY_SECRET=projects/my-project/secrets/journeys-pseudonym-key/versions/1 \
#     deploy/dataflow/launch.sh --parameters=topic_prefix=prod_
#
# KAFKA_SECRET is a Secret Manager secret version holding JOURNEYS_KAFKA_* lines (bootstrap, SASL), and
# PSEUDONYM_KEY_SECRET one holding the key that pseudonymises personal ids: the launcher and the workers read them
# through Secret Manager where they use them, and no secret is ever a job parameter or part of the job graph.
# Optional: BIGQUERY_PROJECT (default: PROJECT), JOB_NAME, SERVICE_ACCOUNT (launcher and workers; default: Compute Engine's) and SUBNETWORK (one from which the
# brokers are reachable: the launcher reads the topics' partitions before the job starts).
set -euo pipefail

: "${PROJECT:?the Google Cloud project the job runs in}"
: "${REGION:?the Dataflow region, e.g. europe-west1}"
: "${BUCKET:?a Cloud Storage bucket for staging and temporary files, without gs://}"
: "${IMAGE:?the image build.sh printed}"
: "${TEMPLATE:?the template spec build.sh printed, gs://...}"
: "${KAFKA_SECRET:?projects/PROJECT/secrets/SECRET/versions/VERSION holding the JOURNEYS_KAFKA_* settings}"
: "${PSEUDONYM_KEY_SECRET:?projects/PROJECT/secrets/SECRET/versions/VERSION holding the pseudonym key}"
JOB_NAME=${JOB_NAME:-journeys-stream-$(date -u +%Y%m%d-%H%M%S)}

optional=()
if [[ -n ${SERVICE_ACCOUNT:-} ]]; then optional+=(--service-account-email="$SERVICE_ACCOUNT"); fi
if [[ -n ${SUBNETWORK:-} ]]; then optional+=(--subnetwork="$SUBNETWORK"); fi

# The workers run the template's own image: it has the project installed (Dataflow's default image has not).
gcloud dataflow flex-template run "$JOB_NAME" --project="$PROJECT" --region="$REGION" \
  --template-file-gcs-location="$TEMPLATE" \
  --staging-location="gs://$BUCKET/staging" --temp-location="gs://$BUCKET/tmp" \
  --parameters=sdk_container_image="$IMAGE" \
  --parameters=kafka_env_file="$KAFKA_SECRET" \
  --parameters=pseudonym_key_file="$PSEUDONYM_KEY_SECRET" \
  --parameters=bigquery_project="${BIGQUERY_PROJECT:-$PROJECT}" \
  "${optional[@]}" "$@"
