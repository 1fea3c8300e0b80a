FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install --no-cache-dir . && useradd --create-home app
USER app
CMD ["cancel-worker", "worker"]
