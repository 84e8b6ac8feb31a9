"""Pulling from peers: request files, the inbox, the scheduler and the SCU."""
