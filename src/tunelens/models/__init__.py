"""Base models: loading by hub id or path (optionally quantized) and the ladder of small models."""
