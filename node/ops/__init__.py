"""Operations: health, metrics, systemd notification and the status report."""
