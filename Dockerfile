# One image for the server and the agent; the command picks the role.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY protocol protocol
COPY agent agent
COPY client client
COPY server server
RUN pip install --no-cache-dir ./protocol ./agent ./client ./server
RUN useradd --system --create-home ferry
USER ferry
EXPOSE 8080
CMD ["ferry", "server", "--host", "0.0.0.0", "--port", "8080"]
