# syntax=docker/dockerfile:1
# Chordflow image: one image for every role (worker, flower, beat, health),
# chosen by the command, e.g. `chordflow worker --queues cpu`.
# See docs/deploy.md.
#
#   docker build -t chordflow:0.1.0 .
#
# The build stage installs the package into a virtualenv; the runtime stage
# copies only that virtualenv, so no build tooling or source tree ships.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/chordflow
WORKDIR /src
# Only what `pip install .` needs: the project metadata (pyproject names
# README.md as the readme), the exact versions to install, and the two packages.
COPY pyproject.toml README.md constraints.txt ./
COPY orchestration ./orchestration
COPY workers ./workers
RUN /opt/chordflow/bin/pip install -c constraints.txt . \
    && /opt/chordflow/bin/chordflow --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="chordflow" \
      org.opencontainers.image.description="Distributed pipeline orchestrator on Celery and Redis" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/chordflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# tini as PID 1 forwards SIGTERM to the process (Celery's warm shutdown) and
# reaps orphans left by shell stages.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot and set
# runAsUser/fsGroup to the same value (k8s/ uses 10001).
RUN groupadd --system --gid 10001 chordflow \
    && useradd --system --uid 10001 --gid 10001 --create-home \
       --home-dir /home/chordflow --shell /usr/sbin/nologin chordflow
COPY --from=build /opt/chordflow /opt/chordflow
USER 10001:10001
WORKDIR /home/chordflow
# Override CMD (compose `command:`, Kubernetes `args:`), never the entrypoint,
# so tini stays PID 1.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["chordflow", "worker", "--queues", "cpu"]
