# syntax=docker/dockerfile:1.7
#
# The lakescore container image: the `lakescore` binary (registry, scoring worker, CLI)
# and the ONNX Runtime shared library taken from the official `onnxruntime` wheel on PyPI
# (checked against its sha256), on a slim Debian runtime that runs as a non-root user.
#
# Build (BuildKit; multi-arch with buildx):
#   docker build -t lakescore:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/lakescore:0.1.0 --push .
#
# Run everything in one container, without authentication (local trial only):
#   docker run --rm -p 8080:8080 -p 8815:8815 \
#     -e LAKESCORE_LISTEN=0.0.0.0:8080 -e LAKESCORE_FLIGHT_LISTEN=0.0.0.0:8815 \
#     -e LAKESCORE_INSECURE_NO_AUTH=true \
#     -v lakescore-data:/var/lib/lakescore lakescore:0.1.0 serve
#
# In Kubernetes use the Helm chart in helm/lakescore (args: `registry` / `scorer`).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --------------------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# C parts of dependencies (ring, zstd, the bundled SQLite). No protoc: proto/ compiles
# its .proto files with protox, in Rust.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin lakescore \
 && install -D -s -m 0755 target/release/lakescore /out/lakescore

# --------------------------------------------------------------------------- ONNX Runtime
# libonnxruntime.so from the onnxruntime wheel the worker is built against (ort rc.15,
# API 1.31). Only a download and an unzip, so it runs on the build platform.
FROM --platform=$BUILDPLATFORM python:3.12-slim-${DEBIAN_RELEASE} AS onnxruntime
ARG TARGETARCH
ARG ORT_VERSION=1.31.1
# sha256 of onnxruntime-${ORT_VERSION}-cp312-cp312-manylinux_2_28_{x86_64,aarch64}.whl
ARG ORT_WHEEL_SHA256_AMD64=1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536
ARG ORT_WHEEL_SHA256_ARM64=0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc
RUN set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) platform=manylinux_2_28_x86_64; sha256="$ORT_WHEEL_SHA256_AMD64" ;; \
      arm64) platform=manylinux_2_28_aarch64; sha256="$ORT_WHEEL_SHA256_ARM64" ;; \
      *) echo "no onnxruntime wheel for TARGETARCH=${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    pip download --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
      --implementation cp --python-version 3.12 --platform "$platform" \
      --dest /wheel "onnxruntime==${ORT_VERSION}"; \
    wheel="/wheel/onnxruntime-${ORT_VERSION}-cp312-cp312-${platform}.whl"; \
    echo "${sha256}  ${wheel}" | sha256sum -c -; \
    mkdir -p /out/lib /out/doc; \
    python -c "import sys, zipfile; w, v = sys.argv[1:]; z = zipfile.ZipFile(w); \
[open(dest, 'wb').write(z.read(member)) for member, dest in ( \
('onnxruntime/capi/libonnxruntime.so.' + v, '/out/lib/libonnxruntime.so.' + v), \
('onnxruntime/LICENSE', '/out/doc/LICENSE'), \
('onnxruntime/ThirdPartyNotices.txt', '/out/doc/ThirdPartyNotices.txt'))]" \
      "$wheel" "$ORT_VERSION"; \
    chmod 0644 /out/lib/* /out/doc/*

# --------------------------------------------------------------------------- runtime
# What this stage puts where is listed in image/contents; scripts/build-image builds the
# same image without pulling a base image, and tests/image.rs keeps the three in step.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG ORT_VERSION=1.31.1
# ca-certificates: HTTPS to object stores and OIDC issuers. libstdc++ (ONNX Runtime)
# and glibc come with the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 lakescore \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/lakescore --no-create-home \
      --shell /usr/sbin/nologin lakescore \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/lakescore
COPY --from=build /out/lakescore /usr/local/bin/lakescore
COPY --from=onnxruntime /out/lib/ /opt/onnxruntime/lib/
COPY --from=onnxruntime /out/doc/ /usr/share/doc/onnxruntime/
ENV LAKESCORE_ONNXRUNTIME_LIB=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}
# `lakescore serve` keeps its embedded defaults under ./lakescore-data
WORKDIR /var/lib/lakescore
USER 65532:65532
# registry HTTP (REST + gRPC), worker Arrow Flight
EXPOSE 8080 8815
LABEL org.opencontainers.image.title="lakescore" \
      org.opencontainers.image.description="ONNX model registry and Arrow Flight batch-scoring workers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/lakescore/lakescore"
ENTRYPOINT ["/usr/local/bin/lakescore"]
CMD ["serve"]
