"""Operations: Prometheus config and rules, Grafana dashboards, and the Ray Serve scale-out deployment."""
