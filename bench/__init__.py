"""Benchmark harness: real uvicorn servers driven by a raw-asyncio load generator."""
