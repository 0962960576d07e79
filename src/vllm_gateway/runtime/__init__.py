"""The runtime: the one owner of every model's life (placement, starts, stops, sleeps and
wakes, health, crashes, backoff, drain, shutdown). Nothing outside it writes an instance."""
