"""Latency (F_lat) and output-length (F_len) estimators: features, training, artifacts, batched prediction."""
