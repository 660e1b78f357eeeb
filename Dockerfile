# One image for every hive service (materializer/query service, distiller, agents, CLI).
#
#   docker build -t hive .                                  # CPU torch (default)
#   docker build -t hive:gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch wheels
#
# The CUDA torch wheels bring their own CUDA runtime, so the slim Python base is enough on a
# host with the NVIDIA driver and container toolkit. BASE_IMAGE swaps the base (e.g. a CUDA
# image that provides python3.11 and pip as `python`) where that is wanted.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG HIVE_UID=10001

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/hive \
    HIVE_LOG_FORMAT=json

# Torch first, from the chosen wheel index, in its own layer: the project's `torch>=…`
# requirement is then already met and pip does not fetch the (CUDA) PyPI build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/hive
COPY pyproject.toml README.m[d] ./
COPY streams ./streams
COPY hive ./hive
COPY agents ./agents
COPY distill ./distill
RUN pip install . && rm -rf /opt/hive/build

# Non-root. Group 0 owns the writable paths so compose may run the image as any uid
# (`user: "${HIVE_UID}:0"`, the uid that owns the credential files on the host).
RUN useradd --uid "${HIVE_UID}" --gid 0 --home-dir /home/hive --create-home --shell /usr/sbin/nologin hive \
    && mkdir -p /data /etc/hive/tls \
    && chown -R "${HIVE_UID}:0" /data /home/hive \
    && chmod -R g+rwX /data /home/hive
USER ${HIVE_UID}:0
WORKDIR /data

# `hive` is on PATH (pip console script); every service picks its subcommand in compose.
CMD ["hive", "--help"]
