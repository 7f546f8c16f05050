"""Background work: queueing, the delivery engine, retries, webhooks, the reconciler."""
