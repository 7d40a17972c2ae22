#!/usr/bin/env bash
# Wheels of the dependencies that the lent GPU machines' image lacks, into .whl/ (git-ignored), for
# scripts/gpu_checks.sh to install there: that machine has PyTorch, Lightning, transformers, peft, tokenizers,
# torchmetrics, pandas, pyarrow, scipy and matplotlib, but reaches no package registry, so MLflow (and what it
# imports), datasets, jsonargparse, datasketch and langid travel with the working tree (the device tool carries
# `.whl` when asked: carry=[".whl"]). The versions are those CI installs here.
#
#   bash scripts/gpu_wheels.sh                   # for the device's Python 3.12 (x86-64, manylinux)
#   PYVER=3.11 WHL=/tmp/whl311 bash scripts/gpu_wheels.sh   # the same set for this machine's Python (a rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
WHL=${WHL:-.whl}
mkdir -p "$WHL"
# What `import lit_llm.cli` and an MLflow sqlite store import, beyond the image's packages (checked by a rehearsal
# in a venv holding only the image's packages: see README, "GPU checks").
packages=(
  mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3
  cachetools==7.3.3 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
  typing-inspection==0.4.2 sqlparse==0.6.1 python-dotenv==1.2.2 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  importlib-metadata==9.1.0 databricks-sdk==0.167.0 google-auth==2.63.1 fastapi==0.165.0 starlette==1.10.0
  cryptography==48.0.0 cffi==2.0.0 pycparser==3.0
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
  datasketch==2.0.0
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${platforms[@]}" -d "$WHL" "${packages[@]}"
# langid publishes only a source archive; it is pure Python, so a wheel built here installs anywhere.
python3 -m pip wheel -q --no-deps -w "$WHL" langid==1.1.6
du -ch "$WHL"/*.whl | tail -1
