"""Prefect flows: ordering, retries and observability around sqz calls; no domain logic."""
