# syntax=docker/dockerfile:1
# Multi-stage build: a wheel stage, then one runtime per software stack (docs/deploy.md, "Hosts by vendor"):
#   cpu     NumPy on any x86-64/aarch64 CPU (the default target)
#   cuda    NVIDIA GPUs: CuPy for CUDA 12 on an NVIDIA CUDA 12 runtime base (`gpu` is its older name)
#   rocm    AMD GPUs: CuPy's ROCm 7.0 build on AMD's ROCm 7.0 base
#   oneapi  Intel GPUs (Level Zero) and CPUs through Intel's OpenCL CPU runtime: dpnp + dpctl
#   xla     JAX: XLA on the CPU (`--build-arg BPBENCH_EXTRAS=xla-tpu,digits` for a Cloud TPU VM)
# Each stage installs only its own extra, so an image carries one array library besides NumPy.

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

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS cuda
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

# The NVIDIA image under its older target name, so compose files and scripts that build `gpu` keep working.
FROM cuda AS gpu

FROM rocm/dev-ubuntu-24.04:7.0 AS rocm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/bpbench
ENV PATH=/opt/bpbench/bin:$PATH \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# cupy-rocm-7-0 links the base image's HIP, hipBLAS, rocBLAS and rocRAND; one CuPy per environment.
RUN pip install --no-cache-dir --find-links /wheels "bpbench[rocm,digits]" && rm -rf /wheels
# The GPUs arrive as /dev/kfd and /dev/dri, readable by the video and render groups (compose adds them).
RUN useradd --create-home --uid 1001 bpbench
USER bpbench
WORKDIR /home/bpbench
ENV BPBENCH_DATA_DIR=/home/bpbench/data
CMD ["bpbench", "worker", "--device", "rocm:0"]

FROM python:3.11-slim-trixie AS oneapi
# Intel's GPU compute runtime (Level Zero and OpenCL) for Intel GPUs; CPUs need only the pip OpenCL runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libze1 libze-intel-gpu1 intel-opencl-icd \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 bpbench
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --find-links /wheels "bpbench[oneapi,digits]" && rm -rf /wheels
USER bpbench
WORKDIR /home/bpbench
ENV BPBENCH_DATA_DIR=/home/bpbench/data \
    PYTHONUNBUFFERED=1
CMD ["bpbench", "worker", "--device", "oneapi:opencl:cpu:0"]

FROM python:3.11-slim AS xla
ARG BPBENCH_EXTRAS=xla,digits
RUN useradd --create-home --uid 1000 bpbench
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --find-links /wheels "bpbench[${BPBENCH_EXTRAS}]" && rm -rf /wheels
USER bpbench
WORKDIR /home/bpbench
ENV BPBENCH_DATA_DIR=/home/bpbench/data \
    PYTHONUNBUFFERED=1
CMD ["bpbench", "worker", "--device", "xla:cpu:0"]
