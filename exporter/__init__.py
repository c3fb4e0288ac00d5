"""The leasestore Prometheus exporter: ``leasestore exporter`` or ``leasestore-exporter``."""
