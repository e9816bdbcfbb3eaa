# annotator's Label Studio ML backend, CPU image. The offline default models ship inside the Python
# packages installed here, so the container downloads nothing at run time.
#   docker build -t annotator .
#   docker run -p 9090:9090 -e LABEL_STUDIO_URL=http://label-studio:8080 -e LABEL_STUDIO_API_KEY=... annotator
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY annotator annotator
COPY cli cli
COPY backends backends
COPY migrations migrations
# constraints.txt pins the CPU wheel of torch: an unpinned resolve pulls a multi-GB CUDA build
RUN python -m venv /opt/annotator \
 && /opt/annotator/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt ".[postgres]"

FROM ${BASE}
RUN useradd --create-home --uid 10001 annotator && mkdir /data && chown annotator /data
COPY --from=build /opt/annotator /opt/annotator
COPY docker/healthcheck.py /opt/annotator/healthcheck.py
# XDG_CACHE_HOME in the volume: the encoders' ONNX exports are made once, not at every start
ENV PATH=/opt/annotator/bin:$PATH \
    ANNOTATOR_DATA_DIR=/data \
    XDG_CACHE_HOME=/data/cache \
    PORT=9090 \
    WORKERS=1 \
    LOG_LEVEL=INFO \
    PYTHONUNBUFFERED=1
USER annotator
WORKDIR /data
VOLUME /data
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 CMD ["python", "/opt/annotator/healthcheck.py"]
# the schema is migrated before the workers start (they refuse an out-of-date database)
CMD ["sh", "-c", "annotator db upgrade && exec annotator serve --host 0.0.0.0 --port \"$PORT\" --workers \"$WORKERS\""]
