#!/usr/bin/env bash
# MLflow tracking server with the model registry, for a team: PostgreSQL backend, artifacts in S3, served through
# the server (clients need no S3 credentials). Job workers off: they cost ~1.9 GB and afsweep does not use them.
set -euo pipefail
: "${MLFLOW_BACKEND_URI:?e.g. postgresql://mlflow:PASSWORD@db:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_URI:?e.g. s3://my-bucket/mlflow-artifacts}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_URI" \
  --serve-artifacts \
  --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
