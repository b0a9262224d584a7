"""The Open Inference Protocol v2 .proto and its generated stubs (`make proto`)."""
