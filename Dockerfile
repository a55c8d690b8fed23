# One image for every Mailwright process: `serve --no-worker` and `worker` (see compose.yaml and
# the README's "Scaling out"). The embedded defaults need none of this: `make run` is enough.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 mailwright
USER mailwright
ENV MAILWRIGHT_HOME=/home/mailwright/data
ENTRYPOINT ["mailwright"]
CMD ["serve", "--host", "0.0.0.0"]
