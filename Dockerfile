# One image for every identify-queue role: worker, local Amplitude-compatible server, producers.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producers ./producers
COPY worker ./worker
RUN pip install --no-cache-dir ".[flower]" && useradd --create-home --uid 10001 identify
USER identify
ENTRYPOINT ["identify-queue"]
CMD ["--help"]
