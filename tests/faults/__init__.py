"""The fault suite: real nats-server, materializer and agent processes under kill -9, SIGSTOP,
full streams, read-only directories and hostile input, checked in Jepsen's style."""
