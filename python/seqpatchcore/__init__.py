"""seqpatchcore: bounded-memory PatchCore anomaly detection for industrial surfaces."""

__version__ = "0.1.0"
