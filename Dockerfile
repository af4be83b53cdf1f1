# syntax=docker/dockerfile:1
# The paycode app image: built in one stage, run from a clean slim stage as an unprivileged user.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/paycode
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY realtime ./realtime
# Every dependency ships manylinux wheels, so no compiler is needed even here.
RUN /opt/paycode/bin/pip install --no-compile . \
    && /opt/paycode/bin/python -m compileall -q /opt/paycode/lib

FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/paycode/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 paycode \
    && useradd --system --uid 10001 --gid paycode --no-create-home --shell /usr/sbin/nologin paycode
COPY --from=build /opt/paycode /opt/paycode
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# SIGTERM: stop accepting, close WebSockets with 1012, finish requests within 10 s, exit.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["paycode", "serve", "--host", "0.0.0.0", "--port", "8000"]
