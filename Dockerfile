# One image for the server and the agent; the command picks the role.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY protocol protocol
COPY agent agent
COPY client client
COPY server server
RUN pip install --no-cache-dir ./protocol ./agent ./client "./server[s3]"
# The folders the stack mounts volumes on, owned by the user that writes them (a named
# volume takes the ownership of the image's folder when it is first created).
RUN useradd --system --create-home ferry \
 && mkdir -p /data /mqtt-auth /var/lib/ferry-agent \
 && chown ferry:ferry /data /mqtt-auth /var/lib/ferry-agent
USER ferry
EXPOSE 8080
CMD ["ferry", "server", "--host", "0.0.0.0", "--port", "8080"]
