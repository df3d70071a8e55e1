# syntax=docker/dockerfile:1
# Multi-stage build: a wheel stage, a CPU runtime (target `cpu`, the default) and a GPU runtime on an
# NVIDIA CUDA 12 base with the `gpu-cuda12` extra (target `gpu`).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY services services
COPY workers workers
COPY cli cli
COPY migrations migrations
# Only our own (pure-Python) wheel: each runtime resolves its dependencies for its own Python.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS cpu
ARG BPBENCH_EXTRAS=digits
RUN useradd --create-home --uid 1000 bpbench
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --find-links /wheels "bpbench[${BPBENCH_EXTRAS}]" && rm -rf /wheels
USER bpbench
WORKDIR /home/bpbench
ENV BPBENCH_DATA_DIR=/home/bpbench/data \
    PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["bpbench", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/bpbench
ENV PATH=/opt/bpbench/bin:$PATH \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# A CUDA 12 base, so CuPy for CUDA 12 (`gpu-cuda12`); `gpu` is CuPy for CUDA 13.
RUN pip install --no-cache-dir --find-links /wheels "bpbench[gpu-cuda12,digits]" && rm -rf /wheels
RUN useradd --create-home --uid 1001 bpbench
USER bpbench
WORKDIR /home/bpbench
ENV BPBENCH_DATA_DIR=/home/bpbench/data
CMD ["bpbench", "worker", "--device", "gpu"]
