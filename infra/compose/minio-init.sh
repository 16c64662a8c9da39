#!/bin/sh
# minio-init (compose): create the platform's bucket in MinIO, then exit 0. MLflow's artifacts
# (s3://$LOOPLINE_S3_BUCKET/mlflow) and the lake (s3://$LOOPLINE_S3_BUCKET/lake) live there; the services that
# write to it wait for this one-shot container with `condition: service_completed_successfully`.
# The credentials reach mc through MC_HOST_<alias> (environment, not arguments), so they appear in no process
# list; they must be URL-safe (hex from `openssl rand -hex 24`, as infra/compose/env.example says).
set -eu

: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set}"
bucket="${S3_BUCKET:-loopline}"
endpoint="${S3_ENDPOINT:-minio:9000}"

MC_HOST_platform="http://${S3_ACCESS_KEY}:${S3_SECRET_KEY}@${endpoint}"
export MC_HOST_platform

# MinIO reports healthy before it may accept writes on a fresh volume: a few tries, then fail loudly
tries=0
until mc mb --ignore-existing "platform/${bucket}"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 10 ]; then
    echo "minio-init: could not create bucket ${bucket} at ${endpoint}" >&2
    exit 1
  fi
  sleep 2
done
mc ls "platform/${bucket}" >/dev/null
echo "minio-init: bucket ${bucket} ready"
