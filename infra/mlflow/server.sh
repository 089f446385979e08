#!/usr/bin/env bash
# MLflow tracking server with the model registry, for a lab: PostgreSQL backend store, artifacts in S3, served
# through the server (`mlflow-artifacts:`: clients need no S3 credentials and read sample grids and models over
# HTTP). The tests start exactly this script (tests/support/servers.py).
#   MLFLOW_BACKEND_URI=postgresql://afsweep@DB:5432/mlflow  (password: PGPASSWORD or ~/.pgpass, never in the URL)
#   MLFLOW_ARTIFACTS_URI=s3://BUCKET/mlflow-artifacts      (S3 credentials: the AWS chain; AWS_ENDPOINT_URL)
#   MLFLOW_HOST (default 127.0.0.1: pass 0.0.0.0 or the node's address to serve other machines), MLFLOW_PORT
# Job workers off: they cost ~1.9 GB and afsweep does not use them.
set -euo pipefail
: "${MLFLOW_BACKEND_URI:?e.g. postgresql://afsweep@db:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_URI:?e.g. s3://my-bucket/mlflow-artifacts}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
MLFLOW=${MLFLOW_BIN:-mlflow}
exec "$MLFLOW" server \
  --backend-store-uri "$MLFLOW_BACKEND_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_URI" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  "$@"  # e.g. --allowed-hosts mlflow.lab:5000 when serving other machines (MLflow 3 checks the Host header)
