# dicomweb-server: DICOMweb on 8042 and DIMSE on 11112, data in /data.
#   docker build -t dicomweb-server .
#   docker run -p 8042:8042 -p 11112:11112 -v archive:/data dicomweb-server
# Configure with DICOMWEB_* environment variables (see config/dicomweb-server.toml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicomweb_server ./dicomweb_server
COPY dimse_scp ./dimse_scp
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 1000 --home-dir /data archive \
    && mkdir -p /data && chown archive /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY config /etc/dicomweb-server
USER archive
WORKDIR /data
ENV DICOMWEB_STORAGE__DATA_DIR=/data \
    DICOMWEB_HTTP__HOST=0.0.0.0 \
    DICOMWEB_DIMSE__HOST=0.0.0.0 \
    DICOMWEB_LOG__FORMAT=json
VOLUME ["/data"]
EXPOSE 8042 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8042/health', timeout=4)"
CMD ["dicomweb-server", "serve"]
