"""The product's engine: BPM adapters, the Kafka bus, the router, autonomy stages and promotion, stage sync,
session workers and the store. It never imports the sandbox or the lab."""
