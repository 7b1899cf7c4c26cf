FROM python:3.11-slim
# A plain (non-editable) install from a copy of the sources that is removed afterwards: the image
# runs the installed package, whose migrations ship inside it.
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY pipeline ./pipeline
RUN pip install --no-cache-dir . && rm -rf /src/*
WORKDIR /app
# The worker's /metrics and /ready (every command that serves them reads this port).
ENV PIPELINE_METRICS_PORT=9100
EXPOSE 9100
USER nobody
# The worker's own /ready: its event loop answers, and PostgreSQL and Redis answer it.
HEALTHCHECK --interval=10s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ['PIPELINE_METRICS_PORT'], timeout=8)"]
# `docker run IMAGE` runs `pipeline worker`; `docker run IMAGE migrate` runs `pipeline migrate`.
ENTRYPOINT ["pipeline"]
CMD ["worker"]
