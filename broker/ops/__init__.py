"""Operations artefacts generated from code: Grafana dashboards (``broker.ops.dashboards``)."""
