# One image for the API and the workers.
#   CPU (default):  docker build -t nvc:cpu .
#   GPU workers:    docker build -t nvc:gpu --build-arg TORCH_VARIANT=cu128 .
# torch is installed first from PyTorch's wheel index for the chosen variant, pinned exactly as in
# pyproject.toml, so `pip install .[server]` never swaps it for another build.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 nvc \
    && mkdir -p /data /scratch && chown nvc:nvc /data /scratch
# A C compiler builds the native coding core (codec._nvcore) during `pip install`; without it the
# codec falls back to the 10-30x slower reference path.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/nvc
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY codec ./codec
COPY service ./service
COPY app ./app
COPY worker ./worker
COPY nvc ./nvc
COPY openapi ./openapi
RUN pip install ".[server]" && python -c "import codec, codec._nvcore, service, app.main, worker.tasks"

USER nvc
ENV NVC_DATA_DIR=/data \
    NVC_WORK_DIR=/scratch
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["nvc", "api", "--host", "0.0.0.0", "--port", "8000"]
