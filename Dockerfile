# One image for the server and the agent; the command picks the role.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protocol protocol
COPY server server
COPY agent agent
COPY client client
COPY cli cli
RUN pip install --no-cache-dir '.[server]'
RUN useradd --system --create-home ferry
USER ferry
EXPOSE 8080
CMD ["ferry", "server", "--host", "0.0.0.0", "--port", "8080"]
