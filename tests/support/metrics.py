"""Prometheus samples as a test reads them from /metrics."""


def metric(client, name: str, **labels) -> float:
    """A sample's value from GET /metrics on `client` (0 when absent): the first series named
    `name` whose labels include `labels`."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        series_name, _, label_text = series.partition("{")
        found = dict(p.split("=", 1) for p in label_text.rstrip("}").split(",") if p)
        if series_name == name and all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0
