# The waybill service, built from this repository alone:
#   docker build -t waybill .
#   docker run --rm waybill -h
# Build: the Go release go.mod names (the image sets GOTOOLCHAIN=local, so
# the tag must match it), modules from the proxy.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static: no libc in the runtime image; -trimpath keeps build paths out.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/waybill ./cmd/waybill

# Runtime: CA roots for WeChat's and managed Kafka's TLS and the zone
# database (distroless ships both), and nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/waybill /usr/local/bin/waybill
# Secrets (app secrets, the Kafka password) are mounted as files and named by
# WAYBILL_SECRETS_FILE and WAYBILL_KAFKA_SASL_PASSWORD_FILE, never baked in.
USER nonroot:nonroot
# /metrics, /healthz and /readyz for the orchestrator and Prometheus.
ENV WAYBILL_ADMIN_LISTEN=:9464
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/waybill"]
