# One image for every service of docker-compose.yml: the project installed as the README installs it
# (pip install -e .). On Linux x86_64 PyPI's torch==2.13.0 is the CUDA build, so the image runs on GPUs.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY search search
RUN pip install --no-cache-dir -e . && python -c "import torch, ray, optuna, optuna_dashboard"
COPY studies studies
ENV PYTHONUNBUFFERED=1 MUSE_CACHE_DIR=/cache
