# syntax=docker/dockerfile:1
# hugie service images. The default model ships inside the package (hugie/models/hugie-small/).
#   CPU:  docker build -t hugie:cpu .                      (the default target)
#   GPU:  docker build --target gpu -t hugie:gpu .          (run with --gpus all)
#   run:  docker run -p 8000:8000 [-e HUGIE_API_KEY=...] hugie:cpu
# Settings come from HUGIE_* environment variables (see `hugie serve --help`).

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- build: one wheel, model included
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY hugie/ hugie/
COPY api/ api/
COPY training/ training/
RUN test -f hugie/models/hugie-small/config.json \
    || { echo "hugie/models/hugie-small/ is missing: put the default model there before building" >&2; exit 1; }
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- kernels: the SpanScore custom op (CPU)
# Built here, once, so a container never runs a compiler or a package manager: the images point
# HUGIE_SPAN_SCORE_LIB at the library. The onnxruntime headers come from Debian's libonnxruntime-dev.
FROM python:${PYTHON_VERSION}-slim AS kernels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HUGIE_CACHE=/opt/hugie-cache
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && python -c "from hugie.kernels.build import build_library; \
build_library('/opt/hugie/kernels', fetch_headers=True, cuda=False)" \
    && cp -r "$(python -c 'import json; print(json.load(open("/opt/hugie/kernels/build.json"))["include"])')" \
       /opt/ort-include

# ---------------------------------------------------------------- kernels-cuda: the same with the CUDA kernel
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04 AS kernels-cuda
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HUGIE_ORT_INCLUDE=/opt/ort-include
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip g++ \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
COPY --from=kernels /opt/ort-include /opt/ort-include
RUN python3 -m pip install /wheels/*.whl \
    && python3 -c "from hugie.kernels.build import build_library; build_library('/opt/hugie/kernels', cuda=True)"

# ---------------------------------------------------------------- GPU: CUDA runtime + onnxruntime-gpu
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HUGIE_SPAN_SCORE_LIB=/opt/hugie/kernels/libhugie_span_score.so
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group hugie
COPY --from=build /wheels /wheels
COPY --from=kernels-cuda /opt/hugie/kernels /opt/hugie/kernels
# onnxruntime-gpu shares its import name with onnxruntime: swap one for the other
RUN python3 -m pip install "$(ls /wheels/hugie-*.whl)[serve]" \
    && python3 -m pip uninstall -y onnxruntime \
    && python3 -m pip install "onnxruntime-gpu>=1.17" \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /home/hugie
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["hugie", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- CPU (default target): the light install
# No torch: the service runs the ONNX model. For the torch backend add the train extra
# (--build-arg EXTRAS=serve,train; install CPU torch first to avoid the CUDA build).
FROM python:${PYTHON_VERSION}-slim AS cpu
ARG EXTRAS=serve
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HUGIE_SPAN_SCORE_LIB=/opt/hugie/kernels/libhugie_span_score.so
RUN useradd --create-home --uid 10001 --user-group hugie
COPY --from=build /wheels /wheels
COPY --from=kernels /opt/hugie/kernels /opt/hugie/kernels
RUN pip install "$(ls /wheels/hugie-*.whl)[${EXTRAS}]" \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /home/hugie
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["hugie", "serve", "--host", "0.0.0.0", "--port", "8000"]
