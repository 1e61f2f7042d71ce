# organet on the CPU: docker build -t organet . && docker run --rm -v "$PWD":/data organet demo (docs/docker.md)
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORGANET_CACHE_DIR=/cache \
    MPLCONFIGDIR=/tmp/matplotlib

# the CPU build of torch first, so organet's torch>=2.2 is already satisfied and no CUDA build is pulled
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install /src && rm -rf /src && mkdir -p /cache /data && chmod 1777 /cache /data

WORKDIR /data
ENTRYPOINT ["organet"]
CMD ["--help"]
